//! Files the daemon owns are written whole or not at all: a temp file in the
//! same directory, fsync, rename over the target, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {cause}")]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    pub cause: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |cause| FsError {
        action,
        path: path.to_path_buf(),
        cause,
    }
}

/// Create `dir` and its parents; the leaf gets `mode` (tightened if it
/// already exists with looser bits, so a socket or key directory is never
/// left readable by others).
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(err("cannot create directory", dir))?;
    let meta = fs::metadata(dir).map_err(err("cannot stat", dir))?;
    if meta.permissions().mode() & 0o777 & !mode != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(err("cannot chmod", dir))?;
    }
    Ok(())
}

/// Atomically replace `path` with `data`, created with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("cannot create", &tmp))?;
        // The mode passed to open is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err("cannot chmod", &tmp))?;
        f.write_all(data).map_err(err("cannot write", &tmp))?;
        f.sync_all().map_err(err("cannot fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(err("cannot rename into place", path))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Read a small file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("cannot read", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn ensure_dir_tightens_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&p, 0o700).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
