//! Foundation layer: the data directory. This type is the one owner of how the directory is
//! created (private to this user), how files are put in it (readable only by this user, never
//! overwritten), and of making a directory found open to other users private again at start.
//! The token key (`auth`), the secret keys (`secrets`) and the SQLite store each keep a file
//! there; they name the file, this type does the rest.

use std::path::{Path, PathBuf};

/// The mode of the data directory, and of each file pgshift keeps in it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// A mode [`DataDir::make_private`] changed: what the path had, and what it has now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChange {
    pub path: PathBuf,
    pub was: u32,
    pub now: u32,
}

/// The data directory, or a file pgshift keeps in it, is open to other users and its mode
/// cannot be changed (another user owns it, or the file system refuses).
#[derive(Debug, thiserror::Error)]
#[error("{} has mode {was:04o}, open to other users, and cannot be made {wanted:04o}: {source}; make it {wanted:04o}, owned by the user pgshift runs as", path.display())]
pub struct NotPrivate {
    pub path: PathBuf,
    pub was: u32,
    pub wanted: u32,
    pub source: std::io::Error,
}

/// A data directory, which may not exist yet.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory, readable only by this user, if it does not exist. An existing
    /// directory keeps the permissions the operator gave it.
    pub fn create(&self) -> std::io::Result<()> {
        if !self.path.exists() {
            std::fs::create_dir_all(&self.path)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(())
    }

    /// Makes the directory (which must exist) and the files `names` in it (those that exist)
    /// private to this user: a mode with any group or other bits becomes 0700 for the directory,
    /// 0600 for a file. Other files in the directory are left as they are. Returns what it
    /// changed, for the caller to log; fails, naming the path, when a mode cannot be changed.
    pub fn make_private(&self, names: &[&str]) -> Result<Vec<ModeChange>, NotPrivate> {
        let mut changed = Vec::new();
        let paths = std::iter::once((self.path.clone(), PRIVATE_DIR_MODE))
            .chain(names.iter().map(|n| (self.file(n), PRIVATE_FILE_MODE)));
        for (path, wanted) in paths {
            if let Some(change) = make_private(&path, wanted)? {
                changed.push(change);
            }
        }
        Ok(changed)
    }

    /// Writes a new file `name` readable only by this user (creating the directory first) and
    /// syncs it. Fails with `AlreadyExists` if the file exists: key files are never overwritten,
    /// and a process that loses a race to create one uses the winner's.
    pub fn write_private(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.create()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(self.file(name))?;
        file.write_all(body)?;
        file.sync_all()
    }
}

/// Gives `path` the mode `wanted` if its mode lets group or others in; nothing if it is private
/// already or does not exist.
#[cfg(unix)]
fn make_private(path: &Path, wanted: u32) -> Result<Option<ModeChange>, NotPrivate> {
    use std::os::unix::fs::PermissionsExt;
    let was = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NotPrivate {
                path: path.to_path_buf(),
                was: 0,
                wanted,
                source,
            })
        }
    };
    if was & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted)).map_err(|source| {
        NotPrivate {
            path: path.to_path_buf(),
            was,
            wanted,
            source,
        }
    })?;
    Ok(Some(ModeChange {
        path: path.to_path_buf(),
        was,
        now: wanted,
    }))
}

/// Modes are Unix's: elsewhere there is nothing to change.
#[cfg(not(unix))]
fn make_private(_: &Path, _: u32) -> Result<Option<ModeChange>, NotPrivate> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_never_overwritten() {
        let dir = DataDir::new(
            std::env::temp_dir().join(format!("pgshift-datadir-{}/nested", uuid::Uuid::new_v4())),
        );
        dir.write_private("k", b"one").unwrap();
        let again = dir.write_private("k", b"two").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.file("k")).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir.path()), 0o700);
            assert_eq!(mode(&dir.file("k")), 0o600);
        }
        std::fs::remove_dir_all(dir.path().parent().unwrap()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn an_open_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("pgshift-datadir-{}", uuid::Uuid::new_v4()));
        let dir = DataDir::new(&root);
        dir.create().unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        for name in ["db", "key", "other"] {
            std::fs::write(dir.file(name), b"x").unwrap();
        }
        set(dir.path(), 0o755);
        set(&dir.file("db"), 0o644);
        set(&dir.file("key"), 0o400);
        set(&dir.file("other"), 0o644);
        let changed = dir.make_private(&["db", "key", "missing"]).unwrap();
        assert_eq!(
            changed,
            [
                ModeChange {
                    path: root.clone(),
                    was: 0o755,
                    now: 0o700
                },
                ModeChange {
                    path: dir.file("db"),
                    was: 0o644,
                    now: 0o600
                },
            ]
        );
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.file("db")), 0o600);
        assert_eq!(mode(&dir.file("key")), 0o400, "private already: untouched");
        assert_eq!(
            mode(&dir.file("other")),
            0o644,
            "not one of pgshift's files"
        );
        assert!(dir.make_private(&["db", "key"]).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
