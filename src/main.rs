use clap::Parser;

fn main() {
    let cli = gridship::cli::Cli::parse();
    gridship::cli::init_logging(&cli.global);
    if let Err(err) = gridship::cli::run(cli) {
        // A closed pipe (`gridship inspect ... | head`) is not a failure.
        if err.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("error: {err:#}");
        std::process::exit(gridship::error::exit_code_for(&err));
    }
}
