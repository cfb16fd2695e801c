//! What a job runs and what it moves: the user's command (or the image's
//! own Entrypoint/Cmd), input files to upload or fetch, outputs to bring
//! back, walltime and memory. `jobdesc` and `promote` read these from the
//! command line and [`super::for_image`] puts them into every job.

use std::path::Path;

use super::model::{InputFile, JobSpec, OutputFile};
use super::validate::is_remote_url;
use crate::error::{Error, Result};

/// The command the job runs, as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `--run 'CMD'`: a shell command line, run by the image's /bin/sh.
    Shell(String),
    /// `-- PROGRAM ARG...`: run as given, no shell.
    Argv(Vec<String>),
}

/// What the image itself would run (`apptainer run`), when gridship knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCommand {
    /// From the image config, after sshd stripping.
    Config {
        entrypoint: Vec<String>,
        cmd: Vec<String>,
    },
    /// The image is not readable here (remote SIF, CVMFS not mounted): why.
    Unknown(String),
}

/// The job's work, as typed on the command line.
#[derive(Debug, Clone, Default)]
pub struct Work {
    pub command: Option<Command>,
    /// Local files (uploaded by `submit`) or URLs (fetched by the CE).
    pub inputs: Vec<String>,
    /// Session-relative names; a trailing `/` marks a directory.
    pub outputs: Vec<String>,
    pub walltime_s: Option<u64>,
    /// Per core, as xRSL `memory`.
    pub memory_mb: Option<u64>,
}

/// Apptainer runs this for `apptainer run`; gridship writes it from the
/// image's Entrypoint and Cmd (transform::apptainer).
pub const RUNSCRIPT: &str = "/.singularity.d/runscript";

fn is_bare_shell(args: &[String]) -> bool {
    matches!(args, [one] if matches!(one.rsplit('/').next(), Some("sh" | "bash" | "ash" | "dash" | "zsh")))
}

fn nothing_to_run(why: String) -> Error {
    Error::BadInput {
        input: "the job's command".into(),
        place: String::new(),
        reason: why,
        hint: Some(
            "say what the job runs: --run 'python3 train.py --out results' or `-- PROGRAM ARG...`"
                .into(),
        ),
    }
}

/// ARC writes a job's arguments into its job script inside double quotes,
/// escaping only `\` and `"` (lrms_common.sh): `$` and backquotes would be
/// expanded by the batch node's shell, outside the container, before the
/// image ever starts. Refuse them rather than run something else.
fn refuse_batch_expansion(input: &str, args: &[String]) -> Result<()> {
    match args.iter().find(|a| a.contains('$') || a.contains('`')) {
        None => Ok(()),
        Some(a) => Err(Error::BadInput {
            input: input.into(),
            place: String::new(),
            reason: format!(
                "{a:?} holds $ or a backquote, which ARC's job script expands on the batch node, outside the container"
            ),
            hint: Some(
                "put the command in a script (in the image, or sent with --input run.sh) and --run 'sh run.sh'"
                    .into(),
            ),
        }),
    }
}

/// Executable and arguments of the job. A shell line runs as
/// `/bin/sh -c LINE` so the container RTE runs the shell inside the image;
/// an argv with a bare program name goes through `/usr/bin/env` (A-REX
/// would look for a relative executable in the session directory); the
/// image's own command runs through its runscript, exactly as `apptainer
/// run` would.
pub fn executable_and_args(
    command: Option<&Command>,
    image: &ImageCommand,
) -> Result<(String, Vec<String>)> {
    match command {
        Some(Command::Shell(line)) => {
            if line.trim().is_empty() {
                return Err(Error::bad_input("--run", "the command line is empty"));
            }
            refuse_batch_expansion("--run", std::slice::from_ref(line))?;
            Ok(("/bin/sh".into(), vec!["-c".into(), line.clone()]))
        }
        Some(Command::Argv(argv)) => {
            refuse_batch_expansion("-- PROGRAM ARG...", argv)?;
            match argv.split_first() {
                None => Err(Error::bad_input("-- PROGRAM", "no program after --")),
                Some((p, rest)) if p.starts_with('/') => Ok((p.clone(), rest.to_vec())),
                Some(_) => Ok(("/usr/bin/env".into(), argv.clone())),
            }
        }
        None => match image {
            ImageCommand::Unknown(why) => Err(nothing_to_run(format!(
                "no command given, and the image's Entrypoint/Cmd cannot be read: {why}"
            ))),
            ImageCommand::Config { entrypoint, cmd } => {
                let all: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
                if all.is_empty() {
                    Err(nothing_to_run(
                        "no command given, and the image has no Entrypoint or Cmd".into(),
                    ))
                } else if is_bare_shell(&all) {
                    // What strip-sshd leaves when sshd was the entrypoint.
                    Err(nothing_to_run(format!(
                        "no command given, and the image's only command is an interactive shell ({}), which would do nothing in a job",
                        all[0]
                    )))
                } else {
                    Ok((RUNSCRIPT.into(), Vec::new()))
                }
            }
        },
    }
}

/// The image command of an image directory gridship can read (an unpacked
/// tree or a mounted CVMFS path): the `OCI_ENTRYPOINT`/`OCI_CMD` lines of
/// its runscript.
pub fn image_command_of_dir(dir: &Path) -> ImageCommand {
    let rs = dir.join(RUNSCRIPT.trim_start_matches('/'));
    let text = match std::fs::read_to_string(&rs) {
        Ok(t) => t,
        Err(e) => {
            return ImageCommand::Unknown(format!("{}: {e}", rs.display()));
        }
    };
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('\'').to_string())
    };
    match (line("OCI_ENTRYPOINT="), line("OCI_CMD=")) {
        (Some(e), Some(c)) => ImageCommand::Config {
            // Only emptiness and a lone shell matter here; the runscript
            // itself runs the real command.
            entrypoint: split_quoted(&e),
            cmd: split_quoted(&c),
        },
        // A runscript not written from an OCI config: it is what runs.
        _ => ImageCommand::Config {
            entrypoint: vec![RUNSCRIPT.into()],
            cmd: Vec::new(),
        },
    }
}

/// Apptainer's `"a" "b c"` form back into arguments (no escapes needed for
/// the emptiness and bare-shell checks).
fn split_quoted(s: &str) -> Vec<String> {
    s.split('"')
        .enumerate()
        .filter(|(i, p)| i % 2 == 1 && !p.is_empty())
        .map(|(_, p)| p.to_string())
        .collect()
}

/// The name a URL's file gets in the session directory.
fn url_file_name(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let (_, rest) = path.split_once("://")?;
    let (_, p) = rest.split_once('/')?;
    p.rsplit('/').next().filter(|n| !n.is_empty())
}

/// `--input` values as input files: a URL becomes a source the CE fetches;
/// a local file must exist and becomes a `file://` source that `submit`
/// uploads (ARC's own clients upload such sources too).
pub fn input_files(inputs: &[String]) -> Result<Vec<InputFile>> {
    let mut out: Vec<InputFile> = Vec::new();
    for given in inputs {
        let what = format!("--input {given}");
        let file = if is_remote_url(given) {
            let name = url_file_name(given).ok_or_else(|| Error::BadInput {
                input: what.clone(),
                place: String::new(),
                reason: "the URL names no file (its path ends in / or is empty)".into(),
                hint: Some("give the URL of one file".into()),
            })?;
            InputFile {
                name: name.to_string(),
                source: Some(given.clone()),
                executable: false,
            }
        } else {
            let local = given.strip_prefix("file://").unwrap_or(given);
            let p = Path::new(local);
            let meta = std::fs::metadata(p).map_err(|e| Error::BadInput {
                input: what.clone(),
                place: String::new(),
                reason: format!("cannot read it: {e}"),
                hint: Some("give an existing local file or a URL the CE can fetch (https://, root://, davs://)".into()),
            })?;
            if !meta.is_file() {
                return Err(Error::BadInput {
                    input: what,
                    place: String::new(),
                    reason: "not a regular file; ARC uploads files, not directories".into(),
                    hint: Some(
                        "pack a directory into one file (tar) and unpack it in the job".into(),
                    ),
                });
            }
            let abs = std::path::absolute(p).map_err(|e| Error::io_path(p, "resolving", e))?;
            let abs = abs.to_str().ok_or_else(|| {
                Error::bad_input(what.clone(), "the path is not UTF-8; ARC cannot name it")
            })?;
            if abs.chars().any(|c| c.is_whitespace() || c == '"') {
                return Err(Error::BadInput {
                    input: what,
                    place: String::new(),
                    reason: "the path has spaces or quotes, which a file:// source cannot carry"
                        .into(),
                    hint: Some("rename the file or copy it to a plain path".into()),
                });
            }
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a regular file has a UTF-8 name here");
            InputFile {
                name: name.to_string(),
                source: Some(format!("file://{abs}")),
                executable: false,
            }
        };
        if let Some(prev) = out.iter().find(|f| f.name == file.name) {
            return Err(Error::BadInput {
                input: what,
                place: String::new(),
                reason: format!(
                    "two inputs would both be '{}' in the job's directory (the other is {})",
                    file.name,
                    prev.source.as_deref().unwrap_or("")
                ),
                hint: Some("rename one of them".into()),
            });
        }
        out.push(file);
    }
    Ok(out)
}

/// `--output` values as output files kept on the CE for `gridship get`.
pub fn output_files(outputs: &[String]) -> Result<Vec<OutputFile>> {
    let mut out: Vec<OutputFile> = Vec::new();
    for o in outputs {
        let name = o.trim_start_matches("./");
        let bad = name.is_empty()
            || name == "/"
            || name.starts_with('/')
            || name.split('/').any(|c| c == "..")
            || name.chars().any(|c| c.is_control());
        if bad {
            return Err(Error::BadInput {
                input: format!("--output {o}"),
                place: String::new(),
                reason: "not a path inside the job's directory".into(),
                hint: Some("give a relative path such as results/ (a trailing / marks a directory) or model.pt".into()),
            });
        }
        if !out.iter().any(|f| f.name == name) {
            out.push(OutputFile {
                name: name.to_string(),
                target: None,
            });
        }
    }
    Ok(out)
}

/// Put the work's files into a job: inputs and outputs are added to the
/// template's own (a name the template already has is kept once).
pub fn add_files(j: &mut JobSpec, inputs: &[InputFile], outputs: &[OutputFile]) -> Result<()> {
    for f in inputs {
        if let Some(t) = j.input_files.iter().find(|t| t.name == f.name) {
            if t.source != f.source {
                return Err(Error::BadInput {
                    input: format!("--input {}", f.source.as_deref().unwrap_or(&f.name)),
                    place: String::new(),
                    reason: format!(
                        "the template already stages '{}' from {}",
                        f.name,
                        t.source
                            .as_deref()
                            .unwrap_or("the job description's directory")
                    ),
                    hint: Some("rename your file".into()),
                });
            }
            continue;
        }
        j.input_files.push(f.clone());
    }
    for f in outputs {
        let bare = f.name.trim_end_matches('/');
        if !j
            .output_files
            .iter()
            .any(|t| t.name.trim_end_matches('/') == bare)
        {
            j.output_files.push(f.clone());
        }
    }
    Ok(())
}

/// `--memory`: MB per core, or with a unit: `4000`, `4000M`, `4G` (binary).
pub fn parse_memory_mb(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size: write 4000 (MB), 4000M or 4G"))?;
    let mb = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MI" | "MIB" => Some(n),
        "G" | "GB" | "GI" | "GIB" => n.checked_mul(1024),
        _ => return Err(format!("'{text}': unknown unit '{unit}'; use M or G")),
    };
    match mb {
        Some(0) => Err("memory must be more than 0".into()),
        Some(m) => Ok(m),
        None => Err(format!("'{text}' is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(e: &[&str], c: &[&str]) -> ImageCommand {
        ImageCommand::Config {
            entrypoint: e.iter().map(|s| s.to_string()).collect(),
            cmd: c.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn commands() {
        let none = cfg(&[], &[]);
        let (e, a) =
            executable_and_args(Some(&Command::Shell("python3 x.py --out r".into())), &none)
                .unwrap();
        assert_eq!(
            (e.as_str(), a),
            (
                "/bin/sh",
                vec!["-c".to_string(), "python3 x.py --out r".into()]
            )
        );
        let (e, a) = executable_and_args(
            Some(&Command::Argv(vec!["python3".into(), "x.py".into()])),
            &none,
        )
        .unwrap();
        assert_eq!((e.as_str(), a.len()), ("/usr/bin/env", 2));
        let (e, _) = executable_and_args(None, &cfg(&["/app/run"], &[])).unwrap();
        assert_eq!(e, RUNSCRIPT);
        for img in [
            none,
            cfg(&[], &["/bin/bash"]),
            ImageCommand::Unknown("remote".into()),
        ] {
            let err = executable_and_args(None, &img).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--run"), "{err}");
        }
        // $ and backquotes would be expanded by ARC's job script on the
        // batch node, outside the container: refused, naming the option.
        for cmd in [
            Command::Shell("echo $HOME > out".into()),
            Command::Shell("echo `id -u`".into()),
            Command::Argv(vec!["/bin/echo".into(), "${X}".into()]),
        ] {
            let err = executable_and_args(Some(&cmd), &cfg(&[], &[])).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let m = err.to_string();
            assert!(
                m.contains("outside the container") && m.contains("--input run.sh"),
                "{m}"
            );
        }
    }

    #[test]
    fn files_and_sizes() {
        let i = input_files(&["https://h/d/data.csv?x=1".into()]).unwrap();
        assert_eq!(i[0].name, "data.csv");
        assert!(input_files(&["https://h/d/".into()]).is_err());
        assert!(
            input_files(&["/no/such/file".into()])
                .unwrap_err()
                .to_string()
                .contains("--input /no/such/file")
        );
        let o = output_files(&["results/".into(), "./m.pt".into()]).unwrap();
        assert_eq!(
            (o[0].name.as_str(), o[1].name.as_str()),
            ("results/", "m.pt")
        );
        assert!(output_files(&["../x".into()]).is_err());
        assert_eq!(parse_memory_mb("4G"), Ok(4096));
        assert_eq!(parse_memory_mb("3000"), Ok(3000));
        assert!(parse_memory_mb("4GB x").is_err() && parse_memory_mb("0").is_err());
        assert_eq!(split_quoted("\"/bin/sh\" \"-c\""), vec!["/bin/sh", "-c"]);
    }
}
