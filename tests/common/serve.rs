//! Support for `gridship serve` tests: a test-made grid PKI (CA in the
//! hashed layout, host and user certificates, RFC 3820 proxies by
//! arcproxy, a foreign CA), token keys, the service as a child process,
//! and raw HTTPS requests by curl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tool;

pub struct User {
    pub dn: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A valid proxy (12 h) made by arcproxy: cert, key, chain in one file.
    pub proxy: PathBuf,
}

pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The hashed CA directory (HASH.0), as /etc/grid-security/certificates.
    pub ca_dir: PathBuf,
    pub host_cert: PathBuf,
    pub host_key: PathBuf,
    pub alice: User,
    pub bob: User,
    pub admin: User,
    /// Alice's proxy that expired in 2020.
    pub expired_proxy: PathBuf,
    /// A user of another CA.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    /// Token signing key (RSA, PEM) and the issuer's public key.
    pub token_key: PathBuf,
    pub token_pub: PathBuf,
    /// Another key: tokens signed with it are badly signed.
    pub wrong_key: PathBuf,
}

fn openssl(args: &[&str]) {
    tool("openssl", args);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn make_ca(dir: &Path, name: &str, subject: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let pem = dir.join(format!("{name}.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        pem.to_str().unwrap(),
        "-days",
        "30",
        "-subj",
        subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    (pem, key)
}

fn sign(
    dir: &Path,
    name: &str,
    subject: &str,
    ca: &(PathBuf, PathBuf),
    ext: &str,
) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let pem = dir.join(format!("{name}.pem"));
    let extfile = dir.join(format!("{name}.ext"));
    write(&extfile, ext);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        subject,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.0.to_str().unwrap(),
        "-CAkey",
        ca.1.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        pem.to_str().unwrap(),
        "-extfile",
        extfile.to_str().unwrap(),
    ]);
    (pem, key)
}

const USER_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";

fn arcproxy(cert: &Path, key: &Path, ca_dir: &Path, out: &Path, constraints: &[&str]) {
    let mut args: Vec<String> = vec![
        "-C".into(),
        cert.display().to_string(),
        "-K".into(),
        key.display().to_string(),
        "-T".into(),
        ca_dir.display().to_string(),
        "-P".into(),
        out.display().to_string(),
    ];
    for c in constraints {
        args.push("-c".into());
        args.push(c.to_string());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("arcproxy", &a);
    assert!(out.is_file(), "arcproxy made no {}", out.display());
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        // An organisation of its own: two tests' users never share a DN.
        let org = super::unique("GridshipServe");
        let ca = make_ca(dir, "ca", &format!("/C=XX/O={org}/CN=Serve Test CA"));
        let ca_dir = dir.join("certificates");
        std::fs::create_dir_all(&ca_dir).unwrap();
        let hash = tool(
            "openssl",
            &["x509", "-in", ca.0.to_str().unwrap(), "-noout", "-hash"],
        );
        std::fs::copy(&ca.0, ca_dir.join(format!("{}.0", hash.trim()))).unwrap();
        let (host_cert, host_key) = sign(
            dir,
            "host",
            &format!("/C=XX/O={org}/CN=localhost"),
            &ca,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        );
        let user = |name: &str, cn: &str| {
            let dn = format!("/C=XX/O={org}/CN={cn}");
            let (cert, key) = sign(dir, name, &dn, &ca, USER_EXT);
            let proxy = dir.join(format!("{name}.proxy"));
            arcproxy(&cert, &key, &ca_dir, &proxy, &["validityPeriod=43200"]);
            User {
                dn,
                cert,
                key,
                proxy,
            }
        };
        let alice = user("alice", "Alice Physicist");
        let bob = user("bob", "Bob Physicist");
        let admin = user("admin", "Node Admin");
        let expired_proxy = dir.join("alice-expired.proxy");
        arcproxy(
            &alice.cert,
            &alice.key,
            &ca_dir,
            &expired_proxy,
            &[
                "validityStart=2020-01-01T00:00:00Z",
                "validityEnd=2020-01-02T00:00:00Z",
            ],
        );
        let other = make_ca(dir, "other-ca", "/C=XX/O=Elsewhere/CN=Other CA");
        let (stranger_cert, stranger_key) = sign(
            dir,
            "stranger",
            &format!("/C=XX/O={org}/CN=Alice Physicist"),
            &other,
            USER_EXT,
        );
        let token_key = dir.join("token.key");
        let token_pub = dir.join("token.pub");
        let wrong_key = dir.join("wrong.key");
        for k in [&token_key, &wrong_key] {
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                k.to_str().unwrap(),
            ]);
        }
        openssl(&[
            "pkey",
            "-in",
            token_key.to_str().unwrap(),
            "-pubout",
            "-out",
            token_pub.to_str().unwrap(),
        ]);
        Pki {
            dir: dir.to_path_buf(),
            ca: ca.0,
            ca_dir,
            host_cert,
            host_key,
            alice,
            bob,
            admin,
            expired_proxy,
            stranger_cert,
            stranger_key,
            token_key,
            token_pub,
            wrong_key,
        }
    }

    /// A WLCG token signed with `key`.
    pub fn token(key: &Path, iss: &str, sub: &str, aud: &str, exp_in: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "iss": iss, "sub": sub, "aud": aud, "exp": now + exp_in, "nbf": now - 60,
            "iat": now - 60, "wlcg.ver": "1.0", "scope": "compute.create compute.read",
            "jti": format!("t-{now}-{sub}"),
        });
        let pem = std::fs::read(key).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap()
    }
}

/// A running `gridship serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    pub config: PathBuf,
    pub root: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

pub const ISSUER: &str = "https://issuer.serve.test/";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Serve {
    /// Write a config under `root` (sockets, state, outputs, audit) with
    /// `extra` YAML lines in the serve: section, and start the service.
    pub fn start(root: &Path, pki: &Pki, port: u16, extra: &str) -> Serve {
        let config = root.join("config.yaml");
        let text = format!(
            "serve:\n  listen: 127.0.0.1:{port}\n  tls: {{cert: {}, key: {}}}\n  client_ca: {}\n  tokens:\n    audiences: [\"https://localhost:{port}\"]\n    issuers: [{{issuer: \"{ISSUER}\", keys: {}}}]\n  admins: [\"{}\"]\n  sockets: {}/sockets\n  state: {}/state\n  outputs: {}/outputs\n  audit: {}/audit.jsonl\n  sites: [glasgow]\n  gpus: false\n{extra}",
            pki.host_cert.display(),
            pki.host_key.display(),
            pki.ca_dir.display(),
            pki.token_pub.display(),
            pki.admin.dn,
            root.display(),
            root.display(),
            root.display(),
            root.display(),
        );
        std::fs::write(&config, text).unwrap();
        Serve::spawn(root, &config, port)
    }

    pub fn spawn(root: &Path, config: &Path, port: u16) -> Serve {
        let log = root.join("serve.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gridship"))
            .args(["-v", "serve", "--config"])
            .arg(config)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("gridship serve starts");
        let s = Serve {
            child,
            config: config.to_path_buf(),
            root: root.to_path_buf(),
            port,
            log,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "gridship serve did not listen on {port}: {}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.root.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// Kill -9, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What curl got: status and body.
pub struct Http {
    pub status: u16,
    pub body: String,
}

impl Http {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// How a raw request authenticates.
pub enum Cred<'a> {
    None,
    Cert(&'a Path, &'a Path),
    Proxy(&'a Path),
    Token(&'a str),
}

/// One HTTPS request by curl (`--path-as-is`: a traversal reaches the service as typed).
pub fn curl(pki: &Pki, url: &str, method: &str, cred: Cred, body: Option<&str>) -> Http {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--path-as-is",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "--cacert",
    ])
    .arg(&pki.ca);
    match cred {
        Cred::None => {}
        Cred::Cert(cert, key) => {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        Cred::Proxy(p) => {
            c.arg("--cert").arg(p).arg("--key").arg(p);
        }
        Cred::Token(t) => {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
    }
    c.arg(url);
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
        // A large body waits for the server's go-ahead, so a refusal by its
        // length arrives instead of a reset mid-upload.
        if b.len() > 16 * 1024 {
            c.args(["-H", "Expect: 100-continue"]);
        }
        c.stdin(Stdio::piped());
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        return parse_curl(&out.stdout, &out.stderr);
    }
    let out = c.output().expect("curl runs");
    parse_curl(&out.stdout, &out.stderr)
}

fn parse_curl(stdout: &[u8], stderr: &[u8]) -> Http {
    let text = String::from_utf8_lossy(stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Http {
        status: code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl gave no status: {text} {}",
                String::from_utf8_lossy(stderr)
            )
        }),
        body: body.to_string(),
    }
}
