//! The Docker Engine, through bollard: `docker-daemon:` images are read with
//! the save endpoint (a docker-archive stream) and written with load.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use bollard::Docker;
use futures_util::StreamExt;

use crate::registry::runtime;
use crate::{Error, Result};

fn engine_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Connect to the engine named by `DOCKER_HOST` (default: the local socket)
/// and agree on an API version the engine speaks.
pub async fn connect() -> Result<Docker> {
    let host = engine_host();
    let no_engine = |e: &dyn std::fmt::Display| {
        Error::Other(format!(
            "no Docker Engine answers at {host}: {e}\n  hint: start one (`dockerd &` as root, or `ci/setup`), or point DOCKER_HOST at a running engine"
        ))
    };
    let docker = Docker::connect_with_defaults().map_err(|e| no_engine(&e))?;
    docker.ping().await.map_err(|e| no_engine(&e))?;
    docker.negotiate_version().await.map_err(|e| no_engine(&e))
}

/// A blocking reader over chunks that an async task sends.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Stream `docker save NAME` as a reader (a docker-archive).
pub fn save(name: &str) -> Result<ChannelReader> {
    let docker = runtime().block_on(connect())?;
    runtime()
        .block_on(docker.inspect_image(name))
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => Error::NotFound {
                what: format!("image {name} in the Docker Engine at {}", engine_host()),
                detail: "see `docker images`".into(),
            },
            e => Error::Other(format!("docker-daemon:{name}: {e}")),
        })?;
    let (tx, rx) = mpsc::sync_channel(16);
    let name = name.to_string();
    runtime().spawn(async move {
        let mut stream = docker.export_image(&name);
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| io::Error::other(format!("docker save {name}: {e}")));
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                break;
            }
        }
    });
    Ok(ChannelReader {
        rx,
        current: bytes::Bytes::new(),
    })
}

/// `docker load` a docker-archive file.
pub fn load(archive: &Path) -> Result<()> {
    runtime().block_on(async {
        let docker = connect().await?;
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| Error::io_path(archive, "opening", e))?;
        let body = crate::registry::file_chunks(file);
        let mut progress = docker.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            body,
            None,
        );
        while let Some(msg) = progress.next().await {
            msg.map_err(|e| Error::Other(format!("docker load: {e}")))?;
        }
        Ok(())
    })
}
