//! Every command closes the stores it opened: a SQLite store is checkpointed and its pool
//! closed, so no `-wal`/`-shm` files are left beside the database when the command ends.

mod sandbox;

use sandbox::Sandbox;

/// The `-wal`/`-shm` files in the sandbox.
fn leftovers(sb: &Sandbox) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-wal") || n.ends_with("-shm"))
        .collect();
    names.sort();
    names
}

#[test]
fn commands_leave_no_sqlite_wal_or_shm_files() {
    let sb = Sandbox::new();
    sb.write(
        "s.toml",
        "[storage]\nprovider = \"sqlite\"\n[storage.config]\npath = \"s.db\"\n",
    );
    sb.write(
        "t.toml",
        "[storage]\nprovider = \"sqlite\"\n[storage.config]\npath = \"t.db\"\n",
    );
    let run = sb.run_with_stdin(&["--config", "s.toml", "put", "k"], b"payload");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(leftovers(&sb), Vec::<String>::new(), "after put");
    for args in [
        &["--config", "s.toml", "ls"][..],
        &["--config", "s.toml", "get", "k"],
        &["--config", "s.toml", "verify"],
        &["--config", "s.toml", "copy", "--to-config", "t.toml"],
        &["--config", "s.toml", "bench", "--ops", "20"],
    ] {
        sb.ok(args);
        assert_eq!(leftovers(&sb), Vec::<String>::new(), "after {args:?}");
    }
    // A failing command closes too.
    sb.fails(&["--config", "s.toml", "get", "absent"], 3);
    assert_eq!(leftovers(&sb), Vec::<String>::new(), "after a failed get");
}
