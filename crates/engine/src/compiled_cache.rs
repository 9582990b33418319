//! The decluttered model, kept as a tract NNEF archive so that later starts skip parsing and
//! simplifying the ONNX graph (about 1.8 s of a 3.4 s load here; see the README).
//!
//! There is one archive per model (named by the model file's sha256). Its sidecar records the
//! build that wrote it (this edgellm version and the executable's size and modification time:
//! a rebuilt binary may declutter differently under the same version; and whether the CPU has
//! the fused attention kernel, which the archive then holds) and the archive's own
//! sha256. An archive from another build is replaced; a truncated or altered one is rebuilt
//! from the ONNX file, never trusted. Writes go to a temporary file renamed into place, so
//! concurrent starts and a crash mid-write leave no half-written archive behind.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tract_onnx::WithOnnx;
use tract_onnx::prelude::*;
use tract_transformers::WithTractTransformers;

/// What the start-up did with the cache, for the health report and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// No cache directory configured.
    Off,
    /// Loaded from the archive.
    Loaded,
    /// Built from the ONNX file and saved.
    Written,
    /// Built from the ONNX file; the archive could not be saved (see the log).
    NotWritten,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Sidecar {
    model_sha256: String,
    build: String,
    archive_sha256: String,
}

/// This edgellm version and this very executable, and whether attention is fused on this CPU
/// (the archive keeps the fused op).
fn build_id() -> String {
    let version = format!("{}, fused attention {}", env!("CARGO_PKG_VERSION"), super::attention::kernel_available());
    match std::env::current_exe().and_then(|exe| exe.metadata()) {
        Ok(meta) => {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("edgellm {version}, executable of {} bytes modified at {modified} ns", meta.len())
        }
        Err(_) => format!("edgellm {version}"),
    }
}

fn nnef() -> tract_nnef::framework::Nnef {
    tract_nnef::nnef().with_onnx().with_tract_transformers().with_registry(super::attention::nnef_registry())
}

fn archive_path(dir: &Path, model_sha256: &str) -> PathBuf {
    dir.join(format!("model-{}.nnef.tar", &model_sha256[..16]))
}

fn sidecar_path(archive: &Path) -> PathBuf {
    archive.with_extension("json")
}

/// The decluttered model from the archive in `dir` when it is there and intact, else from
/// `build`, saved for next time.
pub fn load_or_build(
    dir: &Path,
    model_sha256: &str,
    build: impl FnOnce() -> TractResult<TypedModel>,
) -> TractResult<(TypedModel, CacheOutcome)> {
    let archive = archive_path(dir, model_sha256);
    match load(&archive, model_sha256) {
        Ok(Some(model)) => return Ok((model, CacheOutcome::Loaded)),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(path = %archive.display(), error = %format!("{e:#}"), "compiled model cache unusable, rebuilding it")
        }
    }
    let model = build()?;
    let outcome = match store(&archive, model_sha256, &model) {
        Ok(()) => CacheOutcome::Written,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot save the compiled model cache");
            CacheOutcome::NotWritten
        }
    };
    Ok((model, outcome))
}

/// Removes the archive kept for `model_sha256` (lowercase hex), if any.
pub fn discard(dir: &Path, model_sha256: &str) {
    let archive = archive_path(dir, model_sha256);
    for path in [sidecar_path(&archive), archive] {
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the compiled model cache");
        }
    }
}

/// `Ok(None)` when there is no archive yet; an error when one is there but unusable.
fn load(archive: &Path, model_sha256: &str) -> TractResult<Option<TypedModel>> {
    let sidecar = match std::fs::read(sidecar_path(archive)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let sidecar: Sidecar = serde_json::from_slice(&sidecar)?;
    if sidecar.model_sha256 != model_sha256 || sidecar.build != build_id() {
        tracing::info!(path = %archive.display(), "compiled model cache made by another build or model, replacing it");
        return Ok(None);
    }
    // The archive is hashed on a second thread while tract parses it: the parse is only kept
    // when the hash matches, and start-up does not pay for the two one after the other.
    let (actual, model) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| super::sha256_file(archive));
        let model = nnef().model_for_path(archive);
        (hashing.join(), model)
    });
    let actual = actual.map_err(|_| anyhow::anyhow!("hashing the archive panicked"))??;
    anyhow::ensure!(actual == sidecar.archive_sha256, "archive sha256 {actual} differs from its record");
    Ok(Some(model?))
}

fn store(archive: &Path, model_sha256: &str, model: &TypedModel) -> TractResult<()> {
    let dir = archive.parent().context("archive path has no directory")?;
    std::fs::create_dir_all(dir)?;
    // Streamed to disk and hashed from there: the archive is as large as the model. The
    // archive first, then its record: a reader finds no record, a stale one (and rebuilds), or
    // a complete pair.
    let archive_sha256 = write_then_rename(archive, |file, tmp| {
        nnef().write_to_tar(model, &mut *file)?;
        std::io::Write::flush(file)?;
        file.get_ref().sync_all()?;
        super::sha256_file(tmp).map_err(Into::into)
    })?;
    let sidecar = Sidecar { model_sha256: model_sha256.to_string(), build: build_id(), archive_sha256 };
    write_then_rename(&sidecar_path(archive), |file, _| Ok(serde_json::to_writer_pretty(file, &sidecar)?))
}

/// Writes `path` through a temporary file beside it, renamed into place once `write` (given
/// the buffered file and the temporary path) has succeeded; removed otherwise.
fn write_then_rename<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>, &Path) -> TractResult<T>,
) -> TractResult<T> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let value = write(&mut file, &tmp)?;
        file.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, path)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
