//! The directory a local store lives in (an fs or automerge root, the folder of a SQLite file):
//! created on first use, and a path that cannot be a directory — it, or a folder on the way to
//! it, is a file — is a config error naming the field, not an I/O failure.

use std::io::ErrorKind;
use std::path::Path;

use stowage_core::{Error, Result};

/// Creates `dir` and its parents if missing. `field` is the config field that named it.
pub(crate) fn create(dir: &Path, field: &str) -> Result<()> {
    let not_a_dir = |what: &Path| {
        let problem = if what == dir {
            format!("{} exists and is not a directory", dir.display())
        } else {
            format!(
                "directory {} cannot be made: {} on the way is a file",
                dir.display(),
                what.display()
            )
        };
        Error::invalid_config(
            field,
            format!("{problem}; name a directory (it is created if missing)"),
        )
    };
    if dir.exists() && !dir.is_dir() {
        return Err(not_a_dir(dir));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        // A file on the way (`afile/x`): create_dir_all says "not a directory" or, for the
        // path itself, "already exists".
        if matches!(
            e.kind(),
            ErrorKind::NotADirectory | ErrorKind::AlreadyExists
        ) {
            if let Some(file) = dir.ancestors().find(|a| a.is_file()) {
                return not_a_dir(file);
            }
        }
        Error::io(format!("creating the directory {}", dir.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_on_the_way_is_named_as_a_config_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("afile");
        std::fs::write(&file, b"x").unwrap();
        for dir in [file.clone(), file.join("below")] {
            let err = create(&dir, "storage.config.root").unwrap_err();
            assert_eq!(err.kind(), stowage_core::ErrorKind::InvalidConfig, "{err}");
            let text = err.to_string();
            assert!(text.contains("storage.config.root"), "{text}");
            assert!(text.contains(&file.display().to_string()), "{text}");
        }
        let fresh = tmp.path().join("a/b/c");
        create(&fresh, "storage.config.root").unwrap();
        assert!(fresh.is_dir());
    }
}
