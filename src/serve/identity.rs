//! Who is calling: a grid identity from HTTPS, or a session's own user on
//! its socket.

use serde::Serialize;

/// An authenticated person. The string form is what a session's
/// `gridship.owner` label holds and what `serve.admins` lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Identity {
    /// The end-entity DN of a user certificate or of a proxy's owner.
    X509 { dn: String },
    /// A WLCG token's issuer and subject.
    Token { issuer: String, subject: String },
}

impl Identity {
    /// `/C=../CN=..` for certificates, `ISSUER#SUBJECT` for tokens.
    pub fn key(&self) -> String {
        match self {
            Identity::X509 { dn } => dn.clone(),
            Identity::Token { issuer, subject } => format!("{issuer}#{subject}"),
        }
    }
}

/// A directory name for an owner's outputs: a hash, so a DN's slashes and
/// spaces never make paths.
pub fn owner_dir(owner_key: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(owner_key.as_bytes())[..12])
}

/// How a request reached the service, after authentication.
#[derive(Debug, Clone)]
pub enum Caller {
    /// HTTPS: a person, who may be an admin.
    Person { who: Identity, admin: bool },
    /// A session's socket: the session's owner, acting on that session only.
    Session {
        owner: String,
        container_id: String,
        uid: u32,
        pid: i32,
    },
}

impl Caller {
    /// The owner key this caller acts as.
    pub fn owner_key(&self) -> String {
        match self {
            Caller::Person { who, .. } => who.key(),
            Caller::Session { owner, .. } => owner.clone(),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Person { admin: true, .. })
    }

    /// Whether this caller may see a session owned by `owner` with `id`.
    pub fn may_see(&self, owner: Option<&str>, container_id: &str) -> bool {
        match self {
            Caller::Person { admin: true, .. } => true,
            Caller::Person { who, .. } => owner == Some(who.key().as_str()),
            Caller::Session {
                container_id: mine, ..
            } => mine == container_id,
        }
    }

    /// For the audit log.
    pub fn describe(&self) -> String {
        match self {
            Caller::Person { who, .. } => who.key(),
            Caller::Session { owner, uid, .. } => format!("{owner} (session socket, uid {uid})"),
        }
    }
}
