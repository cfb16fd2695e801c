//! Scrub secrets: what leaves a session is published world-readable, so
//! credentials are removed (default) or refuse the publication
//! (`--fail-on-secrets`). The report names each path and the kind of
//! secret, never the secret.
//!
//! Found by content ([`super::scan`]): private keys and X.509 proxies
//! whatever the file is called, files that are a bearer token. Found by
//! name: proxies (`x509up_u*`), bearer-token files (`bt_u*`, token files of
//! WLCG, Vault, Hugging Face), `.netrc`, git, registry and cloud
//! credentials, key stores, shell and REPL histories. Found in the config:
//! Env values whose names say they are secret (TOKEN, PASSWORD, SECRET,
//! KEY, ...).

use std::collections::{BTreeSet, HashMap};

use super::paths::{PathPattern, PatternSet};
use super::scan::Finding;
use super::{Edit, Transform, remove_where};
use crate::index::NodeId;
use crate::{Error, Result};

/// (kind, patterns) of secrets known by name.
const BY_NAME: &[(&str, &[&str])] = &[
    ("X.509 proxy", &["**/x509up_u*"]),
    (
        "bearer token",
        &[
            "**/bt_u*",
            "**/.vault-token",
            "**/.config/wlcg/token*",
            "**/.cache/huggingface/token",
            "**/.huggingface/token",
            "**/.config/oidc-agent/*",
            "**/.globus/tokens*",
            "**/access_token",
            "**/*.jwt",
        ],
    ),
    ("netrc", &["**/.netrc", "**/_netrc"]),
    (
        "git credentials",
        &["**/.git-credentials", "**/.config/git/credentials"],
    ),
    (
        "registry credentials",
        &[
            "**/.docker/config.json",
            "**/.dockercfg",
            "**/.config/containers/auth.json",
            "/run/containers/*/auth.json",
            "**/.pypirc",
            "**/.npmrc",
            "**/.cargo/credentials",
            "**/.cargo/credentials.toml",
            "**/.gem/credentials",
            "**/.config/gh/hosts.yml",
        ],
    ),
    (
        "cloud credentials",
        &[
            "**/.aws/credentials",
            "**/.aws/sso/cache",
            "**/.aws/cli/cache",
            "**/.config/gcloud/credentials.db",
            "**/.config/gcloud/access_tokens.db",
            "**/.config/gcloud/application_default_credentials.json",
            "**/.config/gcloud/legacy_credentials",
            "**/.azure/accessTokens.json",
            "**/.azure/msal_token_cache.*",
            "**/.azure/service_principal_entries.json",
            "**/.kube/config",
            "**/.s3cfg",
            "**/.boto",
            "**/.config/rclone/rclone.conf",
            "**/.terraform.d/credentials.tfrc.json",
            "**/.config/openstack/clouds.yaml",
        ],
    ),
    (
        "key store",
        &[
            "**/.globus/*.p12",
            "**/*.p12",
            "**/*.pfx",
            "**/.gnupg/private-keys-v1.d",
            "**/.gnupg/secring.gpg",
        ],
    ),
    (
        "shell history",
        &[
            "**/.bash_history",
            "**/.zsh_history",
            "**/.sh_history",
            "**/.ash_history",
            "**/.history",
            "**/.python_history",
            "**/.node_repl_history",
            "**/.mysql_history",
            "**/.psql_history",
            "**/.sqlite_history",
            "**/.rediscli_history",
            "**/.lesshst",
            "**/.viminfo",
            "**/.Rhistory",
            "**/.julia/logs/repl_history.jl",
            "**/.local/share/fish/fish_history",
            "**/.ipython/profile_*/history.sqlite",
        ],
    ),
];

/// Parts of an Env name that say its value is a secret.
const SECRET_ENV_WORDS: &[&str] = &[
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
];

/// Overrides from the site's or recipe's YAML and the command line.
#[derive(Debug, Clone, Default)]
pub struct SecretsPolicy {
    /// Paths that hold no secret despite a finding (a public test key).
    pub allow: PatternSet,
    /// Env names whose values are not secret (e.g. GPG_KEY holding a
    /// public fingerprint).
    pub allow_env: BTreeSet<String>,
}

pub struct ScrubSecrets<'a> {
    pub findings: &'a HashMap<NodeId, Finding>,
    pub policy: &'a SecretsPolicy,
}

impl Transform for ScrubSecrets<'_> {
    fn name(&self) -> &'static str {
        "scrub-secrets"
    }
    fn description(&self) -> &'static str {
        "private keys, proxies, tokens, credentials, histories, secret Env values"
    }
    fn apply(&self, edit: Edit<'_>) -> Result<()> {
        let Edit(index, config, report) = edit;
        let by_name = name_rules()?;
        let allowed = |key: &[u8]| self.policy.allow.covering(key).is_some();
        remove_where(
            index,
            report,
            |key, id, _| {
                if let Some(f) = self.findings.get(&id) {
                    return Some(f.kind().to_string());
                }
                by_name
                    .iter()
                    .find(|(_, p)| p.matches(key))
                    .map(|(kind, _)| kind.to_string())
            },
            allowed,
        );
        if let Some(env) = config.config.env.as_mut() {
            env.retain(|e| {
                let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
                if is_secret_env(name) && !self.policy.allow_env.contains(name) {
                    report.remove(
                        format!("config:Env {name}"),
                        0,
                        "secret-looking environment value",
                    );
                    false
                } else {
                    true
                }
            });
        }
        Ok(())
    }
}

fn name_rules() -> Result<Vec<(&'static str, PathPattern)>> {
    let mut out = Vec::new();
    for (kind, pats) in BY_NAME {
        for p in *pats {
            out.push((*kind, PathPattern::new(p, "built-in scrub-secrets rule")?));
        }
    }
    Ok(out)
}

pub fn is_secret_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_ENV_WORDS.iter().any(|w| upper.contains(w))
}

/// `--fail-on-secrets`: the error that refuses to publish, listing what
/// the scrub would remove (paths and kinds only).
pub fn refuse(found: &[super::Change], source: &str) -> Error {
    let mut list: Vec<String> = found
        .iter()
        .take(50)
        .map(|f| format!("  {} ({})", f.path, f.reason))
        .collect();
    if found.len() > 50 {
        list.push(format!("  ... and {} more", found.len() - 50));
    }
    Error::BadInput {
        input: source.to_string(),
        place: String::new(),
        reason: format!(
            "{} secret(s) found; refusing to publish (--fail-on-secrets):\n{}",
            found.len(),
            list.join("\n")
        ),
        hint: Some(
            "remove them in the session (and rotate them), or promote without --fail-on-secrets to have them removed"
                .into(),
        ),
    }
}
