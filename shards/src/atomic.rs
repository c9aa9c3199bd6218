//! Files that become visible only when complete.
//!
//! [`AtomicFile`] writes to a hidden temporary name in the destination directory
//! (`.{name}.tmp-{pid}`), and [`AtomicFile::commit`] flushes, fsyncs, renames it to the
//! final name and fsyncs the directory. A crash or kill before `commit` leaves at most a
//! hidden temporary file, never a half-written file under the final name; dropping an
//! uncommitted `AtomicFile` removes its temporary file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::ShardError;

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`].
#[derive(Debug)]
pub struct AtomicFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Create the temporary file beside `final_path` (same directory, so the rename is
    /// atomic). An existing final file is replaced only at commit.
    pub fn create(final_path: &Path) -> Result<Self, ShardError> {
        let name = final_path.file_name().ok_or_else(|| {
            ShardError::io(
                final_path.display(),
                io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
            )
        })?;
        let temp_name = format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id());
        let temp_path = final_path.with_file_name(temp_name);
        let file = File::create(&temp_path).map_err(|e| ShardError::io(temp_path.display(), e))?;
        Ok(AtomicFile {
            final_path: final_path.to_path_buf(),
            temp_path,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Where the file will appear.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Where it is being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Flush, fsync, rename into place, fsync the directory.
    pub fn commit(mut self) -> Result<(), ShardError> {
        let Some(writer) = self.file.take() else {
            return Ok(());
        };
        let temp = self.temp_path.display().to_string();
        let file = writer
            .into_inner()
            .map_err(|e| ShardError::io(&temp, e.into_error()))?;
        file.sync_all().map_err(|e| ShardError::io(&temp, e))?;
        drop(file);
        fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| ShardError::io(self.final_path.display(), e))?;
        sync_dir(&self.final_path);
        Ok(())
    }

    fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("atomic file already committed"))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer()?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not committed: the partial file must not survive.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// fsync the directory holding `path`, so a rename survives a power cut. Best effort:
/// some filesystems refuse to open or sync directories, and the data itself is synced.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_only_after_commit_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"abc").unwrap();
        assert!(!path.exists() && f.temp_path().exists());
        f.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");

        let other = dir.path().join("y.bin");
        let mut f = AtomicFile::create(&other).unwrap();
        f.write_all(b"abc").unwrap();
        let temp = f.temp_path().to_path_buf();
        drop(f);
        assert!(!temp.exists() && !other.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
