//! `gridship serve` against a real dockerd, with certificates, proxies
//! (arcproxy) and tokens the tests make: sessions labelled for two users
//! and an admin, promote from inside a session as uid 1000 with no engine
//! socket, refusals in the audit log, the queue, and kill -9.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::{Cred, ISSUER, Pki, Serve, curl, free_port};
use common::{Apptainer, Session, env, sha256_file, to_run};

fn docker(args: &[&str]) -> String {
    common::tool(&env("GRIDSHIP_DOCKER"), args)
}

/// The binary a session runs: a copy, so a rebuild never changes it under
/// a running container (a bind-mounted file keeps its inode).
fn binary_for_sessions(dir: &Path) -> PathBuf {
    let p = dir.join("gridship");
    std::fs::copy(env!("CARGO_BIN_EXE_gridship"), &p).unwrap();
    p
}

/// A development session of `owner`, started the way the node starts
/// them: owner label, socket directory, the gridship binary.
fn session(prefix: &str, owner: &str, sockets: &Path, bin: &Path) -> Session {
    // make-session reads these; each test names its own.
    let name = common::unique(prefix);
    let out =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make-session"))
            .arg(&name)
            .env("GRIDSHIP_SESSION_OWNER", owner)
            .env("GRIDSHIP_SESSION_SOCKETS", sockets)
            .env("GRIDSHIP_SESSION_BINARY", bin)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "make-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Session { name }
}

/// A light labelled container of the session image (no set-up inside).
fn bare_session(prefix: &str, owner: &str) -> Session {
    let name = common::unique(prefix);
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("gridship.owner={owner}"),
        "gridship-test/session:1",
    ]);
    Session { name }
}

/// Wait for the service to serve `s`'s socket.
fn wait_socket(sockets: &Path, s: &Session) {
    let sock = sockets.join(&s.name).join("gridship.sock");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no socket {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `gridship ARGS` inside the session as uid 1000 (bob), in `dir`.
fn inside(s: &Session, dir: &str, args: &[&str]) -> common::Run {
    let mut c = Command::new(env("GRIDSHIP_DOCKER"));
    c.args([
        "exec",
        "-u",
        "1000",
        "-e",
        "HOME=/home/bob",
        "-w",
        dir,
        &s.name,
        "gridship",
    ])
    .args(args);
    to_run(c.output().unwrap())
}

/// The CLI as a client over HTTPS with `proxy`.
fn client(serve: &Serve, pki: &Pki, proxy: &Path, args: &[&str]) -> common::Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridship"));
    c.args(args)
        .arg("--service")
        .arg(serve.url())
        .env("X509_USER_PROXY", proxy)
        .env("X509_CERT_DIR", &pki.ca_dir)
        .env_remove("BEARER_TOKEN")
        .env_remove("BEARER_TOKEN_FILE")
        .env("XDG_RUNTIME_DIR", "/nonexistent")
        .current_dir("/");
    to_run(c.output().unwrap())
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn running(s: &Session) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", &s.name]).trim() == "true"
}

/// Poll an operation until it ends.
fn wait_op(serve: &Serve, pki: &Pki, id: &str, limit: Duration) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let r = curl(
            pki,
            &format!("{}/api/v1/operations/{id}", serve.url()),
            "GET",
            Cred::Proxy(&pki.alice.proxy),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let op = r.json();
        if matches!(op["state"].as_str(), Some("done" | "failed" | "cancelled")) {
            return op;
        }
        assert!(
            t0.elapsed() < limit,
            "operation {id} still {} after {limit:?}",
            op["state"]
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The last audit line, which must be a refusal of `action`.
fn assert_refused_and_audited(serve: &Serve, before: usize, action_part: &str, why_part: &str) {
    let audit = serve.audit();
    let new = &audit[before..];
    assert!(
        new.iter()
            .any(|l| l["action"].as_str().unwrap_or("").contains(action_part)
                && l["result"].as_str().unwrap_or("").starts_with("refused")
                && l["result"].as_str().unwrap_or("").contains(why_part)),
        "no audit line refusing {action_part} ({why_part}) in {new:#?}"
    );
}

#[test]
fn identities_sessions_refusals_and_promote_from_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki").tap_mkdir());
    let root = tmp.path().join("node").tap_mkdir();
    let port = free_port();
    let serve = Serve::start(&root, &pki, port, "");
    let sockets = root.join("sockets");
    let bin = binary_for_sessions(tmp.path());
    let a = session("gs-serve-a", &pki.alice.dn, &sockets, &bin);
    let b = bare_session("gs-serve-b", &pki.bob.dn);
    let token_sub = "b7c4e2b0-token-user";
    let t = bare_session("gs-serve-t", &format!("{ISSUER}#{token_sub}"));
    wait_socket(&sockets, &a);
    let url = serve.url();

    // Each user lists only their own; the admin sees all.
    let mine = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["--json", "session", "list"],
    )
    .ok();
    assert_eq!(names(&mine.json()), vec![a.name.as_str()]);
    let bobs = client(&serve, &pki, &pki.bob.proxy, &["--json", "session", "list"]).ok();
    assert_eq!(names(&bobs.json()), vec![b.name.as_str()]);
    let all = names(
        &client(
            &serve,
            &pki,
            &pki.admin.proxy,
            &["--json", "session", "list"],
        )
        .ok()
        .json(),
    );
    for s in [&a.name, &b.name, &t.name] {
        assert!(all.contains(s), "admin sees {all:?}");
    }
    let listed = &mine.json()[0];
    assert_eq!(listed["state"], "running");
    assert_eq!(listed["gpus"], "none");
    // Sizes are measured apart from listings: a new session's comes soon after.
    let t0 = Instant::now();
    let size = loop {
        let s = client(
            &serve,
            &pki,
            &pki.alice.proxy,
            &["--json", "session", "show", &a.name],
        )
        .ok()
        .json();
        if let Some(n) = s["size_rw"].as_u64() {
            break n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never measured: {s}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // make-session's pip cache alone is 8 MiB.
    assert!(size > 8 << 20, "{size}");
    // A token holder is the issuer and subject of the token.
    let good = Pki::token(
        &pki.token_key,
        ISSUER,
        token_sub,
        &format!("https://localhost:{port}"),
        600,
    );
    let r = curl(
        &pki,
        &format!("{url}/api/v1/sessions"),
        "GET",
        Cred::Token(&good),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(names(&r.json()), vec![t.name.as_str()]);

    // A foreign session answers exactly as a missing one.
    let foreign = curl(
        &pki,
        &format!("{url}/api/v1/sessions/{}", b.name),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    );
    let missing = curl(
        &pki,
        &format!("{url}/api/v1/sessions/{}-none", b.name),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    );
    assert_eq!((foreign.status, missing.status), (404, 404));
    assert_eq!(
        foreign.body,
        missing.body.replace(&format!("{}-none", b.name), &b.name)
    );
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["session", "stop", &b.name],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(running(&b), "alice stopped bob's session");

    // Refused, audited, and nothing done.
    let ops_before = curl(
        &pki,
        &format!("{url}/api/v1/operations"),
        "GET",
        Cred::Proxy(&pki.admin.proxy),
        None,
    )
    .json();
    let n = serve.audit().len();
    let r = curl(
        &pki,
        &format!("{url}/api/v1/sessions"),
        "GET",
        Cred::None,
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no client certificate and no bearer token")
    );
    assert_refused_and_audited(&serve, n, "GET /api/v1/sessions", "no client certificate");

    let n = serve.audit().len();
    let r = curl(
        &pki,
        &format!("{url}/api/v1/sessions"),
        "GET",
        Cred::Cert(&pki.stranger_cert, &pki.stranger_key),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_refused_and_audited(
        &serve,
        n,
        "GET /api/v1/sessions",
        "client certificate refused",
    );

    let n = serve.audit().len();
    let r = curl(
        &pki,
        &format!("{url}/api/v1/sessions"),
        "GET",
        Cred::Proxy(&pki.expired_proxy),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
    assert_refused_and_audited(&serve, n, "GET /api/v1/sessions", "expired");

    for (token, why) in [
        (
            Pki::token(
                &pki.token_key,
                ISSUER,
                token_sub,
                "https://elsewhere.example",
                600,
            ),
            "audience",
        ),
        (
            Pki::token(
                &pki.token_key,
                ISSUER,
                token_sub,
                &format!("https://localhost:{port}"),
                -600,
            ),
            "expired",
        ),
        (
            Pki::token(
                &pki.wrong_key,
                ISSUER,
                token_sub,
                &format!("https://localhost:{port}"),
                600,
            ),
            "signature",
        ),
    ] {
        let n = serve.audit().len();
        let r = curl(
            &pki,
            &format!("{url}/api/v1/sessions"),
            "GET",
            Cred::Token(&token),
            None,
        );
        assert_eq!(r.status, 401, "{why}: {}", r.body);
        assert!(r.body.contains(why), "{why}: {}", r.body);
        assert!(!r.body.contains(&token), "the token is echoed");
        assert_refused_and_audited(&serve, n, "GET /api/v1/sessions", why);
    }

    let promote_url = format!("{url}/api/v1/sessions/{}/promote", a.name);
    let n = serve.audit().len();
    let r = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(r#"{"args": ["--site", "glasgow", "--run", "python3 run.py $(cat /etc/shadow)"]}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("holds $ or a backquote"), "{}", r.body);
    assert_refused_and_audited(&serve, n, "promote", "backquote");
    // Options naming host paths are not the service's to take.
    let n = serve.audit().len();
    let r = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(r#"{"args": ["--site", "glasgow", "--out", "/etc"]}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("--out"), "{}", r.body);
    assert_refused_and_audited(&serve, n, "promote", "--out");

    let n = serve.audit().len();
    let big = format!(
        r#"{{"args": ["--site", "glasgow", "--keep", "{}"]}}"#,
        "x".repeat(100_000)
    );
    let r = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(&big),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert_refused_and_audited(&serve, n, "promote", "larger than");
    let ops_after = curl(
        &pki,
        &format!("{url}/api/v1/operations"),
        "GET",
        Cred::Proxy(&pki.admin.proxy),
        None,
    )
    .json();
    assert_eq!(ops_before, ops_after, "a refused request made an operation");
    assert!(running(&a) && running(&b));

    // The socket answers only processes inside its session: not the host.
    let n = serve.audit().len();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(sockets.join(&a.name).join("gridship.sock"))
        .arg("http://gridship/api/v1/sessions/self")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the host got an answer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_refused_and_audited(
        &serve,
        n,
        "session socket",
        "is not inside the session's container",
    );

    // Inside the session, as uid 1000 with no engine socket: promote this session.
    let no_engine = Command::new(env("GRIDSHIP_DOCKER"))
        .args([
            "exec",
            &a.name,
            "sh",
            "-c",
            "test -e /var/run/docker.sock || echo none",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&no_engine.stdout).trim(), "none");
    let r = inside(
        &a,
        "/home/bob/project",
        &[
            "promote",
            "--site",
            "glasgow",
            "--to",
            "sif",
            "--run",
            "python3 run.py",
            "--output",
            "results/",
            "--tag",
            "t1",
        ],
    );
    assert_eq!(r.code, 0, "promote inside: {}\n{}", r.stdout, r.stderr);
    // Progress as on the host: one line per stage.
    for stage in ["snapshot", "merge", "sif", "jobdesc"] {
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&format!("{stage}: "))),
            "no {stage} line in {}",
            r.stderr
        );
    }
    let home = "/home/bob/gridship/t1";
    let listing = docker(&[
        "exec",
        "-u",
        "1000",
        &a.name,
        "sh",
        "-c",
        &format!("cd {home} && ls && stat -c '%U %a %n' *"),
    ]);
    for f in [
        format!("{}.sif", a.name),
        format!("{}.xrsl", a.name),
        format!("{}.adl", a.name),
    ] {
        assert!(
            listing.contains(&format!("bob 600 {f}")),
            "{f} not bob's in {listing}"
        );
    }
    // The files are the service's artifacts, digest for digest.
    let ops = curl(
        &pki,
        &format!("{url}/api/v1/operations"),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    )
    .json();
    let op = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["tag"] == "t1")
        .unwrap()
        .clone();
    assert_eq!(op["state"], "done");
    // Readable by the unprivileged user Apptainer runs as, as a site's storage would be.
    let sifs = tmp.path().join("sifs").tap_mkdir();
    use std::os::unix::fs::PermissionsExt;
    for p in [tmp.path(), sifs.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let host_copy = sifs.join("copied.sif");
    docker(&[
        "cp",
        &format!("{}:{home}/{}.sif", a.name, a.name),
        host_copy.to_str().unwrap(),
    ]);
    std::fs::set_permissions(&host_copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sif_art = op["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["path"] == format!("{}.sif", a.name))
        .unwrap();
    assert_eq!(
        sha256_file(&host_copy),
        sif_art["sha256"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
    );
    // The job names the SIF where the user has it.
    let xrsl = docker(&["exec", &a.name, "cat", &format!("{home}/{}.xrsl", a.name)]);
    assert!(
        xrsl.contains(&format!("\"file://{home}/{}.sif\"", a.name)),
        "{xrsl}"
    );
    assert!(
        xrsl.contains("(arguments = \"-c\" \"python3 run.py\")"),
        "{xrsl}"
    );
    // The SIF runs under real Apptainer as an unprivileged user.
    let got = Apptainer::user(1000).ok(&[
        "exec",
        host_copy.to_str().unwrap(),
        "python3",
        "/home/bob/project/run.py",
    ]);
    assert_eq!(got.trim(), "uid=1000 answer=42");
    assert!(running(&a), "the session stopped");

    // Naming another session from inside fails, as not found.
    let r = inside(&a, "/home/bob", &["promote", &b.name, "--site", "glasgow"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    let r = inside(&a, "/home/bob", &["session", "stop", &b.name]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(running(&b));

    // Without --run, the project's executable entrypoint.sh is the job.
    docker(&[
        "exec",
        "-u",
        "1000",
        &a.name,
        "sh",
        "-c",
        "printf '#!/bin/sh\\nmkdir -p results && python3 /home/bob/project/run.py > results/out.txt\\n' > /home/bob/project/entrypoint.sh && chmod 755 /home/bob/project/entrypoint.sh",
    ]);
    let r = inside(
        &a,
        "/home/bob/project",
        &[
            "promote",
            "--site",
            "glasgow",
            "--to",
            "sif",
            "--output",
            "results/",
            "--tag",
            "ep1",
            "--dry-run",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("the job runs /home/bob/project/entrypoint.sh"),
        "{}",
        r.stderr
    );
    let ops = curl(
        &pki,
        &format!("{url}/api/v1/operations"),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    )
    .json();
    let ep = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["tag"] == "ep1")
        .unwrap()
        .clone();
    let args: Vec<&str> = ep["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(
        args[args.len() - 2..],
        ["--", "/home/bob/project/entrypoint.sh"],
        "{args:?}"
    );

    // Downloads: only the operation's own files, no traversal, no symlink escape.
    let id = op["id"].as_str().unwrap();
    let files = format!("{url}/api/v1/operations/{id}/files");
    let r = curl(
        &pki,
        &format!("{files}/{}.xrsl", a.name),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    );
    assert_eq!((r.status, r.body.as_str()), (200, xrsl.as_str()));
    for evil in [
        "../../../../../../etc/passwd",
        "..%2F..%2Fstate%2Foperations.json",
    ] {
        let n = serve.audit().len();
        let r = curl(
            &pki,
            &format!("{files}/{evil}"),
            "GET",
            Cred::Proxy(&pki.alice.proxy),
            None,
        );
        assert_eq!(r.status, 404, "{evil}: {}", r.body);
        assert!(!r.body.contains("root:"), "{}", r.body);
        assert_refused_and_audited(&serve, n, "download", "not a file of operation");
    }
    let out_dir = root
        .join("outputs")
        .join(op["output_dir"].as_str().unwrap());
    let xrsl_path = out_dir.join(format!("{}.xrsl", a.name));
    std::fs::remove_file(&xrsl_path).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &xrsl_path).unwrap();
    let n = serve.audit().len();
    let r = curl(
        &pki,
        &format!("{files}/{}.xrsl", a.name),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_refused_and_audited(&serve, n, "download", "leaves the operation's outputs");
    // Bob may not read alice's operation at all.
    let r = curl(
        &pki,
        &format!("{files}/{}.sif", a.name),
        "GET",
        Cred::Proxy(&pki.bob.proxy),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Two promotes of one session at once: the second waits for the first.
    let body = r#"{"args": ["--site", "glasgow", "--to", "sif", "--run", "true", "--dry-run"]}"#;
    let first = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(body),
    );
    let second = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(body),
    );
    assert_eq!(
        (first.status, second.status),
        (202, 202),
        "{} {}",
        first.body,
        second.body
    );
    let (first, second) = (first.json(), second.json());
    assert_eq!(second["state"], "queued", "{second}");
    assert!(second["position"].as_u64().unwrap() >= 1, "{second}");
    let f = wait_op(
        &serve,
        &pki,
        first["id"].as_str().unwrap(),
        Duration::from_secs(180),
    );
    let s = wait_op(
        &serve,
        &pki,
        second["id"].as_str().unwrap(),
        Duration::from_secs(180),
    );
    assert_eq!(
        (f["state"].as_str(), s["state"].as_str()),
        (Some("done"), Some("done"))
    );
    assert!(
        s["started"].as_i64() >= f["ended"].as_i64(),
        "ran at once: {f} {s}"
    );

    // Every change is one JSON line: time, identity, session, action, result.
    let audit = serve.audit();
    let done = audit
        .iter()
        .find(|l| l["action"] == "promote" && l["result"] == "done" && l["operation"] == op["id"])
        .unwrap();
    assert_eq!(done["identity"], pki.alice.dn.as_str());
    assert_eq!(done["session"], a.name.as_str());
    assert!(done["time"].as_str().unwrap().ends_with('Z'));
    // No proxy or token ever reaches the log or the audit.
    let log = std::fs::read_to_string(&serve.log).unwrap();
    let audit_text = std::fs::read_to_string(root.join("audit.jsonl")).unwrap();
    for secret in [good.as_str(), "PRIVATE KEY"] {
        assert!(
            !log.contains(secret) && !audit_text.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn the_queue_runs_in_turn_and_a_killed_service_leaves_nothing_half_made() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki").tap_mkdir());
    let root = tmp.path().join("node").tap_mkdir();
    let port = free_port();
    let mut serve = Serve::start(&root, &pki, port, "  limits: {node: 1, user: 2}\n");
    let url = serve.url();
    let sessions: Vec<Session> = (0..3)
        .map(|i| bare_session(&format!("gs-queue{i}"), &pki.alice.dn))
        .collect();
    let body = r#"{"args": ["--site", "glasgow", "--to", "sif", "--run", "true"]}"#;

    // Three promotes, a node limit of 1: they run in turn, positions shown.
    let ids: Vec<String> = sessions
        .iter()
        .map(|s| {
            let r = curl(
                &pki,
                &format!("{url}/api/v1/sessions/{}/promote", s.name),
                "POST",
                Cred::Proxy(&pki.alice.proxy),
                Some(body),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let q = curl(
        &pki,
        &format!("{url}/api/v1/queue"),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    )
    .json();
    let ops = q["operations"].as_array().unwrap();
    let queued: Vec<u64> = ops
        .iter()
        .filter(|o| o["state"] == "queued")
        .map(|o| o["position"].as_u64().unwrap())
        .collect();
    let running = ops.iter().filter(|o| o["state"] == "running").count();
    assert!(running <= 1, "{q}");
    assert_eq!(queued, (1..=queued.len() as u64).collect::<Vec<_>>(), "{q}");
    assert!(queued.len() >= 2, "{q}");
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["operation", "show", &ids[2]],
    )
    .ok();
    assert!(r.stdout.contains("\"position\""), "{}", r.stdout);
    let done: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| wait_op(&serve, &pki, id, Duration::from_secs(300)))
        .collect();
    for w in done.windows(2) {
        assert_eq!(w[0]["state"], "done", "{}", w[0]);
        assert!(
            w[1]["started"].as_i64() >= w[0]["ended"].as_i64(),
            "overlap: {} {}",
            w[0],
            w[1]
        );
    }

    // kill -9 mid-promote, then a restart: failed "service restarted", nothing half-made.
    let r = curl(
        &pki,
        &format!("{url}/api/v1/sessions/{}/promote", sessions[0].name),
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(body),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let pid = loop {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("state/operations.json")).unwrap())
                .unwrap();
        let op = record
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == id.as_str())
            .unwrap()
            .clone();
        if op["stage"].as_str() == Some("sif") {
            break op["pid"].as_u64().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never reached the sif stage: {op}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    serve.kill9();
    // The child dies with its service.
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the promote child {pid} outlived its service"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let serve = Serve::spawn(&root, &serve.config.clone(), port);
    let op = curl(
        &pki,
        &format!("{url}/api/v1/operations/{id}"),
        "GET",
        Cred::Proxy(&pki.alice.proxy),
        None,
    )
    .json();
    assert_eq!(op["state"], "failed", "{op}");
    assert_eq!(op["error"], "service restarted", "{op}");
    let staging = root.join("outputs/.staging");
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "left in staging"
    );
    let outputs: Vec<String> = walkdir::WalkDir::new(root.join("outputs"))
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(root.join("outputs"))
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|p| p.contains(&id) || p.contains(".tmp") || p.contains(".gridship-"))
        .collect();
    assert!(outputs.is_empty(), "half artifacts: {outputs:?}");
    assert!(
        serve
            .audit()
            .iter()
            .any(|l| l["operation"] == id.as_str() && l["result"] == "failed: service restarted")
    );
    // And the next promote succeeds.
    let r = curl(
        &pki,
        &format!("{url}/api/v1/sessions/{}/promote", sessions[0].name),
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(body),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let next = wait_op(
        &serve,
        &pki,
        r.json()["id"].as_str().unwrap(),
        Duration::from_secs(180),
    );
    assert_eq!(next["state"], "done", "{next}");
    drop(serve);
}

/// The session image with a user of uid 1000 made at build time, as a
/// node's approved images have (make-session adds bob at run time instead).
fn image_with_user() -> String {
    let image = "gridship-test/session-user:1";
    let have = Command::new(env("GRIDSHIP_DOCKER"))
        .args(["image", "inspect", image])
        .output()
        .unwrap();
    if !have.status.success() {
        // make-session builds the base image when it is missing.
        drop(bare_session("gs-image", "nobody"));
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM gridship-test/session:1\nRUN adduser --quiet --disabled-password --gecos '' --uid 1000 bob\n",
        )
        .unwrap();
        let out = Command::new(env("GRIDSHIP_DOCKER"))
            .args(["build", "-q", "--network", "none", "-t", image])
            .arg(ctx.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    image.to_string()
}

#[test]
fn session_actions_new_snapshot_stop_start_remove_and_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki").tap_mkdir());
    let root = tmp.path().join("node").tap_mkdir();
    let port = free_port();
    let image = image_with_user();
    let serve = Serve::start(
        &root,
        &pki,
        port,
        "  images: [\"gridship-test/session-user:\"]\n",
    );
    let url = serve.url();
    let name = common::unique("gs-new");
    // Removed at the end, whatever happens.
    let _guard = Session { name: name.clone() };
    let key = tmp.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop\n").unwrap();

    // Not an approved image: refused, audited, nothing made.
    let n = serve.audit().len();
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &[
            "session",
            "new",
            &name,
            "--image",
            "gridship-test/session:1",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("neither an approved image"),
        "{}",
        r.stderr
    );
    assert_refused_and_audited(&serve, n, "new-session", "approved");
    // A key with options (command=...) is refused too.
    std::fs::write(
        tmp.path().join("bad.pub"),
        "command=\"sh\" ssh-ed25519 AAAA x\n",
    )
    .unwrap();
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &[
            "session",
            "new",
            &name,
            "--image",
            &image,
            "--ssh-key",
            tmp.path().join("bad.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);

    // New session: owner label, socket directory, the key in the user's home.
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &[
            "--json",
            "session",
            "new",
            &name,
            "--image",
            &image,
            "--ssh-key",
            key.to_str().unwrap(),
        ],
    )
    .ok();
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["--json", "operation", "wait", &id],
    )
    .ok();
    assert_eq!(r.json()["state"], "done", "{}", r.stdout);
    let label = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"gridship.owner\"}}",
        &name,
    ]);
    assert_eq!(label.trim(), pki.alice.dn);
    let mounts = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Source}}:{{.Destination}}:{{.RW}} {{end}}",
        &name,
    ]);
    assert_eq!(
        mounts.trim(),
        format!(
            "{}:/run/gridship:false",
            root.join("sockets").join(&name).display()
        )
    );
    let keys = docker(&[
        "exec",
        &name,
        "sh",
        "-c",
        "stat -c '%U %a' /home/bob/.ssh /home/bob/.ssh/authorized_keys; cat /home/bob/.ssh/authorized_keys",
    ]);
    assert_eq!(
        keys,
        "bob 700\nbob 600\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop\n"
    );
    let sock = root.join("sockets").join(&name).join("gridship.sock");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no socket for the new session"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["--json", "session", "show", &name],
    )
    .ok()
    .json();
    assert_eq!(
        (listed["state"].as_str(), listed["image"].as_str()),
        (Some("running"), Some(image.as_str()))
    );
    // A name that exists is refused.
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["session", "new", &name, "--image", &image],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("exists already"), "{}", r.stderr);

    // Snapshot: an image of the owner's that the session keeps running through.
    docker(&["exec", &name, "sh", "-c", "echo kept > /home/bob/state.txt"]);
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["--json", "session", "snapshot", &name],
    )
    .ok();
    let op = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &[
            "--json",
            "operation",
            "wait",
            r.json()["id"].as_str().unwrap(),
        ],
    )
    .ok()
    .json();
    assert_eq!(op["state"], "done", "{op}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "true"
    );
    let snap = format!("gridship-session/{name}:{}", op["tag"].as_str().unwrap());
    let from_snap = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        &snap,
        "/home/bob/state.txt",
    ]);
    assert_eq!(from_snap, "kept\n");
    // Bob may not start from alice's snapshot.
    let r = client(
        &serve,
        &pki,
        &pki.bob.proxy,
        &["session", "new", &format!("{name}-b"), "--image", &snap],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);

    // Stop and start; bob can do neither.
    let r = client(&serve, &pki, &pki.bob.proxy, &["session", "stop", &name]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    client(&serve, &pki, &pki.alice.proxy, &["session", "stop", &name]).ok();
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "false"
    );
    client(&serve, &pki, &pki.alice.proxy, &["session", "start", &name]).ok();
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "true"
    );

    // Cancel: a queued promote ends cancelled and never runs.
    let body = r#"{"args": ["--site", "glasgow", "--to", "sif", "--run", "true"]}"#;
    let promote_url = format!("{url}/api/v1/sessions/{name}/promote");
    let first = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(body),
    )
    .json();
    let second = curl(
        &pki,
        &promote_url,
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some(body),
    )
    .json();
    let sid = second["id"].as_str().unwrap();
    let r = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["--json", "operation", "cancel", sid],
    )
    .ok();
    assert_eq!(r.json()["state"], "cancelled", "{}", r.stdout);
    let r = curl(
        &pki,
        &format!("{url}/api/v1/operations/{sid}/cancel"),
        "POST",
        Cred::Proxy(&pki.alice.proxy),
        Some("{}"),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    // And a running one: its child is killed, its files removed.
    let fid = first["id"].as_str().unwrap();
    client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["operation", "cancel", fid],
    )
    .ok();
    let f = wait_op(&serve, &pki, fid, Duration::from_secs(60));
    assert_eq!(f["state"], "cancelled", "{f}");
    let s = wait_op(&serve, &pki, sid, Duration::from_secs(5));
    assert!(s["started"].is_null(), "the cancelled one ran: {s}");
    assert_eq!(
        std::fs::read_dir(root.join("outputs/.staging"))
            .unwrap()
            .count(),
        0
    );

    // Remove: gone from the engine and from the list; its socket closed.
    client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["session", "remove", &name],
    )
    .ok();
    let gone = Command::new(env("GRIDSHIP_DOCKER"))
        .args(["inspect", &name])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    let mine = client(
        &serve,
        &pki,
        &pki.alice.proxy,
        &["--json", "session", "list"],
    )
    .ok()
    .json();
    assert!(names(&mine).is_empty(), "{mine}");
    let audit = serve.audit();
    for action in [
        "new-session",
        "snapshot",
        "stop",
        "start",
        "cancel",
        "remove",
    ] {
        assert!(
            audit.iter().any(|l| l["action"] == action
                && l["identity"] == pki.alice.dn.as_str()
                && !l["result"].as_str().unwrap().starts_with("refused")),
            "no audit line for {action}"
        );
    }
    docker(&["rmi", &snap]);
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
