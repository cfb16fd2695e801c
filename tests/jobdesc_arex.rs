//! submit, status, kill and clean against the real A-REX that `ci/arex`
//! starts on localhost (fork batch system), and the errors it answers with.

mod common;

use std::path::Path;

use common::arc::{arex, gridship};

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn auth<'a>(a: &'a common::arc::Arex, jobs: &'a str) -> Vec<&'a str> {
    vec![
        "--ca-dir",
        &a.ca_dir,
        "--proxy",
        &a.proxy,
        "--jobs-file",
        jobs,
    ]
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn submit_upload_status_fetch_clean() {
    let a = arex();
    let d = tmpdir();
    let jobs = d.path().join("jobs.json").display().to_string();
    std::fs::write(d.path().join("in.txt"), "payload-from-client\n").unwrap();
    let x = d.path().join("job.xrsl");
    std::fs::write(&x, "&(jobname=\"gs-upload\")(executable=\"/bin/sh\")(arguments=\"-c\" \"echo ran-by-$(id -un); cat in.txt\")\n (inputfiles=(\"in.txt\" \"\"))(stdout=\"out.txt\")(stderr=\"err.txt\")(outputfiles=(\"out.txt\" \"\"))(walltime=\"5m\")(queue=\"gpu\")").unwrap();
    let mut args = vec!["--json", "submit", x.to_str().unwrap(), "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sub = json(&r.stdout);
    let id = sub["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(sub["jobs"][0]["uploaded"], serde_json::json!(["in.txt"]));
    assert!(
        std::fs::read_to_string(&jobs).unwrap().contains(&id),
        "job id kept locally"
    );

    let mut args = vec!["--json", "status", &id, "--wait", "--wait-timeout", "120"];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        json(&r.stdout)["jobs"][0]["state"],
        "FINISHED",
        "{}",
        r.stdout
    );

    // The uploaded file reached the job, which ran as the mapped account.
    let client = gridship::ce::arc::ArcRest::connect(
        &a.url,
        &gridship::ce::AuthConfig {
            ca_dir: Some(a.ca_dir.clone().into()),
            proxy: Some(a.proxy.clone().into()),
            mode: gridship::ce::AuthMode::X509,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(client.fetch_file(&id, "out.txt")).unwrap();
    assert_eq!(out, "ran-by-griduser\npayload-from-client\n");

    let mut args = vec!["clean", &id];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !std::fs::read_to_string(&jobs).unwrap().contains(&id),
        "cleaned job is forgotten"
    );
    // The CE no longer knows it: a per-job error, exit 1.
    let mut args = vec!["status", &id, "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("error 404"), "{}", r.stdout);
}

#[test]
fn kill_a_running_job() {
    let a = arex();
    let d = tmpdir();
    let jobs = d.path().join("jobs.json").display().to_string();
    let x = d.path().join("sleep.xrsl");
    // A distinctive duration so the leftover payload can be found by PID.
    std::fs::write(&x, "&(executable=\"/bin/sleep\")(arguments=\"293\")(walltime=\"10m\")(queue=\"cpu\")(jobname=\"gs-kill\")").unwrap();
    let mut args = vec!["--json", "submit", x.to_str().unwrap(), "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = json(&r.stdout)["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut args = vec!["--json", "kill", &id];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json(&r.stdout)["jobs"][0]["status-code"], "202");
    let mut args = vec!["--json", "status", &id, "--wait", "--timeout", "120"];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    // A killed job did not finish successfully: exit 1, and it says so.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not every job finished successfully") && r.stderr.contains(&id),
        "{}",
        r.stderr
    );
    let state = json(&r.stdout)["jobs"][0]["state"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(state == "KILLED" || state == "FAILED", "{state}");
    // The fork backend leaves the payload running; end it by PID.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd == b"/bin/sleep\x00293\x00"
            && let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>()
        {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    let mut args = vec!["clean", &id];
    args.extend(auth(&a, &jobs));
    assert_eq!(gridship(&args, &[]).code, 0);
}

#[test]
fn delegation_for_a_staged_input() {
    let a = arex();
    let d = tmpdir();
    let jobs = d.path().join("jobs.json").display().to_string();
    // A real HTTP server on loopback for the CE to stage from.
    let www = d.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("data.txt"), "staged-by-the-ce\n").unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // ARC's HTTP client sends absolute request targets (GET http://host/path),
    // which Python's stock handler takes for a path; strip the origin.
    let script = r#"
import functools, http.server, sys, urllib.parse
class H(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, p):
        return super().translate_path(urllib.parse.urlsplit(p).path or "/")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), functools.partial(H, directory=sys.argv[2])).serve_forever()
"#;
    let mut server = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, &port.to_string(), www.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let x = d.path().join("stage.xrsl");
    std::fs::write(&x, format!("&(executable=\"/bin/cat\")(arguments=\"data.txt\")(inputfiles=(\"data.txt\" \"http://127.0.0.1:{port}/data.txt\"))(stdout=\"out.txt\")(outputfiles=(\"out.txt\" \"\"))(walltime=\"5m\")(queue=\"gpu\")")).unwrap();
    let mut args = vec!["--json", "submit", x.to_str().unwrap(), "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sub = json(&r.stdout);
    let id = sub["jobs"][0]["id"].as_str().unwrap().to_string();
    assert!(
        sub["jobs"][0]["delegation"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{sub}"
    );
    let mut args = vec!["--json", "status", &id, "--wait", "--wait-timeout", "150"];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        json(&r.stdout)["jobs"][0]["state"],
        "FINISHED",
        "{}\n{}",
        r.stdout,
        std::fs::read_to_string(Path::new(&a.dir).join("log/arex.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut args = vec!["clean", &id];
    args.extend(auth(&a, &jobs));
    assert_eq!(gridship(&args, &[]).code, 0);
}

#[test]
fn ce_errors_are_reported() {
    let a = arex();
    let d = tmpdir();
    let jobs = d.path().join("jobs.json").display().to_string();
    let x = d.path().join("q.xrsl");
    std::fs::write(
        &x,
        "&(executable=\"/bin/true\")(walltime=\"1m\")(queue=\"nosuchqueue\")",
    )
    .unwrap();
    // Unknown queue: A-REX answers 201 with a per-job 500.
    let mut args = vec!["submit", x.to_str().unwrap(), "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("nosuchqueue"), "{}", r.stderr);
    // A certificate the CE does not map.
    let r = gridship(
        &[
            "submit",
            x.to_str().unwrap(),
            "--ce",
            &a.url,
            "--ca-dir",
            &a.ca_dir,
            "--cert",
            &a.stranger_cert,
            "--key",
            &a.stranger_key,
            "--jobs-file",
            &jobs,
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("403") && r.stderr.contains("authentication"),
        "{}",
        r.stderr
    );
    // A bearer token (found through BEARER_TOKEN_FILE) this CE has no token config for.
    let tok = d.path().join("bt");
    std::fs::write(&tok, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.\n").unwrap();
    let r = gridship(
        &[
            "status",
            "someid",
            "--ce",
            &a.url,
            "--ca-dir",
            &a.ca_dir,
            "--jobs-file",
            &jobs,
        ],
        &[("BEARER_TOKEN_FILE", tok.to_str().unwrap())],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("bearer token from BEARER_TOKEN_FILE"),
        "{}",
        r.stderr
    );
    // A CE whose certificate we do not trust.
    let r = gridship(
        &[
            "status",
            "someid",
            "--ce",
            &a.url,
            "--ca-file",
            &a.user_cert,
            "--proxy",
            &a.proxy,
            "--jobs-file",
            &jobs,
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
}

#[test]
fn arcsub_and_gridship_run_the_same_description_alike() {
    let a = arex();
    let d = tmpdir();
    let jobs = d.path().join("jobs.json").display().to_string();
    let x = d.path().join("same.xrsl");
    std::fs::write(&x, "&(executable=\"/bin/echo\")(arguments=\"same\" \"say \"\"hi\"\"\")(stdout=\"out.txt\")(outputfiles=(\"out.txt\" \"\"))(walltime=\"5m\")(queue=\"gpu\")").unwrap();
    let joblist = d.path().join("arc-jobs.dat");
    let out = std::process::Command::new("arcsub")
        .args(["-z", &a.client_conf, "-j", joblist.to_str().unwrap(), "-C", &a.url, "-T", "arcrest", "-f", x.to_str().unwrap()])
        .output()
        .expect("arcsub (nordugrid-arc-client + nordugrid-arc-plugins-arcrest) must be installed: run ci/arex");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "arcsub: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arc_id = text
        .split("/rest/1.0/jobs/")
        .nth(1)
        .map(|s| s.trim().to_string())
        .expect("arcsub prints the job URL");
    let mut args = vec!["--json", "submit", x.to_str().unwrap(), "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ours = json(&r.stdout)["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut args = vec![
        "--json",
        "status",
        &arc_id,
        &ours,
        "--ce",
        &a.url,
        "--wait",
        "--wait-timeout",
        "120",
    ];
    args.extend(auth(&a, &jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = json(&r.stdout);
    assert_eq!(st["jobs"][0]["state"], "FINISHED");
    assert_eq!(st["jobs"][1]["state"], "FINISHED");
    let client = gridship::ce::arc::ArcRest::connect(
        &a.url,
        &gridship::ce::AuthConfig {
            ca_dir: Some(a.ca_dir.clone().into()),
            proxy: Some(a.proxy.clone().into()),
            mode: gridship::ce::AuthMode::X509,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let theirs = rt.block_on(client.fetch_file(&arc_id, "out.txt")).unwrap();
    let mine = rt.block_on(client.fetch_file(&ours, "out.txt")).unwrap();
    assert_eq!(theirs, "same say \"hi\"\n");
    assert_eq!(mine, theirs);
    let mut args = vec!["clean", &arc_id, &ours, "--ce", &a.url];
    args.extend(auth(&a, &jobs));
    assert_eq!(gridship(&args, &[]).code, 0);
}

/// A TCP relay to A-REX that closes the first `drop_first` connections
/// as soon as they are accepted (a TLS handshake broken off), then relays.
struct BreakingRelay {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BreakingRelay {
    fn start(target: &str, drop_first: usize) -> BreakingRelay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let target = target.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                if count.fetch_add(1, Ordering::SeqCst) < drop_first {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        BreakingRelay { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A connection the CE breaks off before the request is sent is made
/// again (three times at most), and the answer is the one a clean
/// connection gives; a CE that always breaks it off is an error that says
/// how often it was tried.
#[test]
fn a_broken_off_connection_is_made_again() {
    let a = arex();
    let d = tmpdir();
    let jobs = d.path().join("jobs.json").display().to_string();
    let host_port = a
        .url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let port = host_port.rsplit(':').next().unwrap();
    let target = format!("127.0.0.1:{port}");
    let status = |url: &str| {
        let mut args = vec!["status", "gridship-no-such-job", "--ce", url];
        args.extend(auth(&a, &jobs));
        gridship(&args, &[])
    };
    let direct = status(&a.url);
    assert!(direct.stdout.contains("Job not found"), "{}", direct.stderr);

    let relay = BreakingRelay::start(&target, 2);
    let url = a
        .url
        .replace(&host_port, &format!("localhost:{}", relay.port));
    let relayed = status(&url);
    assert_eq!(
        (relayed.code, &relayed.stdout),
        (direct.code, &direct.stdout),
        "{}",
        relayed.stderr
    );
    assert!(relay.accepted() >= 3, "{} connections", relay.accepted());

    let dead = BreakingRelay::start(&target, usize::MAX);
    let url = a
        .url
        .replace(&host_port, &format!("localhost:{}", dead.port));
    let r = status(&url);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("connecting failed 4 times"),
        "{}",
        r.stderr
    );
    assert_eq!(dead.accepted(), 4);
}
