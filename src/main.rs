use clap::Parser;

fn main() {
    let cli = gridship::cli::Cli::parse();
    gridship::cli::init_logging(&cli.global);
    let events = cli.global.events;
    if let Err(err) = gridship::cli::run(cli) {
        // A closed pipe (`gridship inspect ... | head`) is not a failure.
        if err.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        if events {
            // stderr carries JSON lines only.
            gridship::event::log(&format!("ERROR {err:#}"));
        } else {
            eprintln!("error: {err:#}");
        }
        std::process::exit(gridship::error::exit_code_for(&err));
    }
}
