//! The record commands end to end, run as the real binary against the embedded default store
//! (SQLite at ./stowage-data/stowage.db inside a temporary working directory).

mod sandbox;

use sandbox::{all_bytes, Sandbox};
use serde_json::Value;

/// Larger than one streaming chunk (256 KiB) so chunk boundaries are crossed.
const BIG: usize = 600 * 1024 + 17;

#[test]
fn default_store_round_trips_every_byte_value_via_file_and_stdin() {
    let sb = Sandbox::new();
    let payload = all_bytes(BIG);
    let input = sb.write("in.bin", &payload);

    let run = sb.ok(&["put", "bin/file.bin", input.to_str().unwrap()]);
    assert!(
        sb.join("stowage-data/stowage.db").exists(),
        "embedded default store not created"
    );
    let line = run.text();
    assert!(
        line.starts_with("put default/bin/file.bin v1 blake3:"),
        "{line}"
    );
    assert!(line.contains("KiB"), "{line}");

    sb.ok(&["get", "bin/file.bin", "-o", "out.bin"]);
    assert_eq!(std::fs::read(sb.join("out.bin")).unwrap(), payload);

    let run = sb.run_with_stdin(&["put", "bin/stdin.bin", "-"], &payload);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = sb.run_with_stdin(&["put", "bin/stdin-implicit.bin"], &payload[..1000]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let got = sb.ok(&["get", "bin/stdin.bin"]);
    assert_eq!(got.stdout, payload, "stdout round trip differs");
    let got = sb.ok(&["get", "bin/stdin-implicit.bin", "-o", "-"]);
    assert_eq!(got.stdout, &payload[..1000]);

    // Same bytes, same hash, whichever way they came in.
    let a = sb.ok(&["--json", "head", "bin/file.bin"]).json();
    let b = sb.ok(&["--json", "head", "bin/stdin.bin"]).json();
    assert_eq!(a["hash"], b["hash"]);
    assert_eq!(a["size"], BIG as u64);

    // An empty payload is a record too.
    let run = sb.run_with_stdin(&["put", "empty"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = sb.ok(&["get", "empty"]);
    assert!(got.stdout.is_empty());
}

#[test]
fn json_output_has_exactly_the_record_fields_with_their_types() {
    let sb = Sandbox::new();
    let run = sb.run_with_stdin(
        &[
            "--json",
            "put",
            "notes/a.txt",
            "--tag",
            "red",
            "--tag",
            "blue",
            "--attr",
            "n=200",
            "--attr",
            "s=ok",
            "--attr",
            "q=\"007\"",
            "--attr",
            "flag=true",
            "--content-type",
            "text/plain",
        ],
        b"hello world!",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rec = run.json();
    let mut fields: Vec<&str> = rec
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "attributes",
            "content_type",
            "created_at",
            "deleted_at",
            "hash",
            "key",
            "namespace",
            "size",
            "tags",
            "updated_at",
            "version"
        ]
    );
    assert_eq!(rec["namespace"], "default");
    assert_eq!(rec["key"], "notes/a.txt");
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["size"], 12);
    let hash = rec["hash"].as_str().unwrap();
    assert!(
        hash.starts_with("blake3:") && hash.len() == 7 + 64,
        "{hash}"
    );
    assert_eq!(rec["content_type"], "text/plain");
    assert_eq!(rec["tags"], serde_json::json!(["blue", "red"]));
    assert_eq!(rec["attributes"]["n"], 200);
    assert!(rec["attributes"]["n"].is_u64());
    assert_eq!(rec["attributes"]["s"], "ok");
    assert_eq!(rec["attributes"]["q"], "007");
    assert_eq!(rec["attributes"]["flag"], true);
    assert!(rec["deleted_at"].is_null());
    for t in ["created_at", "updated_at"] {
        let s = rec[t].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(s).is_ok(),
            "{t} = {s:?} is not RFC 3339"
        );
    }

    // head, ls, versions print the same object.
    let head = sb.ok(&["--json", "head", "notes/a.txt"]).json();
    assert_eq!(head, rec);
    assert_eq!(sb.ok(&["--json", "ls"]).json(), rec);
    assert_eq!(sb.ok(&["--json", "versions", "notes/a.txt"]).json(), rec);

    // A tombstone carries deleted_at.
    let tomb = sb.ok(&["--json", "rm", "notes/a.txt"]).json();
    assert_eq!(tomb["version"], 2);
    assert!(humantime::parse_rfc3339(tomb["deleted_at"].as_str().unwrap()).is_ok());
    assert_eq!(tomb["created_at"], rec["created_at"]);
}

#[test]
fn stale_if_version_is_a_conflict_and_changes_nothing() {
    let sb = Sandbox::new();
    sb.run_with_stdin(&["put", "k"], b"one");
    sb.run_with_stdin(&["put", "k"], b"two");

    let run = sb.run_with_stdin(&["put", "k", "--if-version", "1"], b"three");
    assert_eq!(run.code, 4, "{}", run.stderr);
    sandbox::assert_one_error_line(&run.stderr);
    assert!(
        run.stderr.contains("conflict") && run.stderr.contains("k"),
        "{}",
        run.stderr
    );
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"two");
    assert_eq!(sb.ok(&["--json", "head", "k"]).json()["version"], 2);

    let run = sb.run_with_stdin(&["put", "k", "--base-version", "1"], b"three");
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"two");

    let run = sb.run_with_stdin(&["--json", "put", "k", "--if-version", "2"], b"three");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["version"], 3);
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"three");

    // A precondition on a key that does not exist yet is a conflict too.
    let run = sb.run_with_stdin(&["put", "new", "--if-version", "1"], b"x");
    assert_eq!(run.code, 4, "{}", run.stderr);
    sb.fails(&["get", "new"], 3);
}

#[test]
fn if_absent_refuses_an_existing_key_but_not_a_deleted_one() {
    let sb = Sandbox::new();
    let run = sb.run_with_stdin(&["put", "k", "--if-absent"], b"first");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = sb.run_with_stdin(&["put", "k", "--if-absent"], b"second");
    assert_eq!(run.code, 4, "{}", run.stderr);
    sandbox::assert_one_error_line(&run.stderr);
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"first");

    sb.ok(&["rm", "k"]);
    let run = sb.run_with_stdin(&["--json", "put", "k", "--if-absent"], b"third");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["version"], 3);

    // Two preconditions at once are a usage error.
    let run = sb.run_with_stdin(&["put", "k", "--if-absent", "--if-version", "3"], b"x");
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn missing_records_exit_3() {
    let sb = Sandbox::new();
    let run = sb.fails(&["get", "nope"], 3);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
    sb.fails(&["head", "nope"], 3);
    sb.fails(&["rm", "nope"], 3);
    sb.fails(&["versions", "nope"], 3);
    sb.fails(&["purge", "nope"], 3);
    sb.run_with_stdin(&["put", "k"], b"x");
    let run = sb.fails(&["get", "k", "--version", "9"], 3);
    assert!(run.stderr.contains('9'), "{}", run.stderr);
    sb.fails(&["head", "k", "--version", "9"], 3);

    // A tombstone is a version `versions` lists, so the message does not call it missing.
    sb.ok(&["rm", "k"]);
    assert!(sb.ok(&["versions", "k"]).text().contains("deleted"));
    // `get` reads the key's history and says which it is.
    let run = sb.fails(&["get", "k", "--version", "2"], 3);
    assert!(
        run.stderr
            .contains("version 2 of record default/k is a deletion marker"),
        "{}",
        run.stderr
    );
    let run = sb.fails(&["restore", "k", "--version", "2"], 3);
    assert!(
        run.stderr.contains(
            "record default/k has no readable version 2: it was never written, was purged, \
             or is a deletion marker"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn rm_restore_versions_purge_gc_verify() {
    let sb = Sandbox::new();
    sb.run_with_stdin(&["put", "doc"], b"version one");
    sb.run_with_stdin(&["put", "doc"], b"version two");
    sb.run_with_stdin(&["put", "other"], b"kept");

    // rm with a stale precondition changes nothing.
    sb.fails(&["rm", "doc", "--if-version", "1"], 4);
    assert_eq!(sb.ok(&["get", "doc"]).stdout, b"version two");

    let run = sb.ok(&["rm", "doc", "--if-version", "2"]);
    assert!(
        run.text().contains("deleted default/doc v3"),
        "{}",
        run.text()
    );
    sb.fails(&["get", "doc"], 3);
    sb.fails(&["rm", "doc"], 3);
    assert_eq!(
        sb.ok(&["get", "doc", "--version", "1"]).stdout,
        b"version one"
    );
    let keys: Vec<String> = sb
        .ok(&["--json", "ls"])
        .json_lines()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["other"]);
    let with_deleted = sb.ok(&["--json", "ls", "--deleted"]).json_lines();
    assert_eq!(with_deleted.len(), 2);
    assert!(with_deleted[0]["deleted_at"].is_string());
    assert!(sb.ok(&["ls", "--deleted"]).text().contains("(deleted)"));

    let versions = sb.ok(&["--json", "versions", "doc"]).json_lines();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(versions[2]["deleted_at"].is_string());
    let text = sb.ok(&["versions", "doc"]).text();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().nth(2).unwrap().contains("deleted"), "{text}");

    let restored = sb
        .ok(&["--json", "restore", "doc", "--version", "1"])
        .json();
    assert_eq!(restored["version"], 4);
    assert!(restored["deleted_at"].is_null());
    assert_eq!(sb.ok(&["get", "doc"]).stdout, b"version one");

    let run = sb.ok(&["--json", "purge", "doc"]);
    assert_eq!(run.json()["versions_removed"], 4);
    sb.fails(&["versions", "doc"], 3);
    sb.fails(&["get", "doc", "--version", "1"], 3);
    assert_eq!(sb.ok(&["get", "other"]).stdout, b"kept");

    // "version one" and "version two" are no longer referenced; "kept" is.
    let gc = sb.ok(&["--json", "gc"]).json();
    assert_eq!(gc["blobs_removed"], 2, "{gc}");
    assert_eq!(gc["bytes_freed"], 22, "{gc}");
    assert!(gc["blobs_kept"].as_u64().unwrap() >= 1, "{gc}");
    let again = sb.ok(&["--json", "gc"]).json();
    assert_eq!(again["blobs_removed"], 0, "{again}");
    let run = sb.ok(&["gc"]);
    assert!(run.text().starts_with("gc: removed 0"), "{}", run.text());
    // stderr is not a terminal here, so no progress bar is drawn.
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    let report = sb.ok(&["--json", "verify"]).json();
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert!(report["records_checked"].as_u64().unwrap() >= 1, "{report}");
    let run = sb.ok(&["verify"]);
    assert!(run.text().contains("no problems"), "{}", run.text());
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    // After a purge the key starts again at version 1.
    let run = sb.run_with_stdin(&["--json", "put", "doc"], b"fresh");
    assert_eq!(run.json()["version"], 1);
}

#[test]
fn ls_pages_with_limit_and_after_and_filters_by_prefix() {
    let sb = Sandbox::new();
    for key in ["a", "b/1", "b/2", "b/3", "c"] {
        let run = sb.run_with_stdin(&["put", key], key.as_bytes());
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let all = sb.ok(&["ls"]).text();
    let keys: Vec<&str> = all
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b/1", "b/2", "b/3", "c"]);
    assert!(all.lines().all(|l| l.contains("v1")), "{all}");
    assert!(all.lines().nth(1).unwrap().contains("3 B"), "{all}");

    let page = sb.ok(&["ls", "--limit", "2"]);
    let text = page.text();
    let keys: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b/1"]);
    assert!(page.stderr.contains("--after b/1"), "{}", page.stderr);

    let mut next = sb
        .ok(&["--json", "ls", "--limit", "2", "--after", "b/1"])
        .json_lines();
    // With --json, a last line says where to continue when more records follow.
    assert_eq!(
        next.pop().unwrap(),
        serde_json::json!({"more": true, "next_after": "b/3"})
    );
    let keys: Vec<&str> = next.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["b/2", "b/3"]);
    let last = sb.ok(&["--json", "ls", "--limit", "2", "--after", "b/3"]);
    assert_eq!(last.json_lines().len(), 1);
    assert!(last.json_lines()[0]["key"] == "c");
    assert!(
        last.stderr.is_empty(),
        "no hint on the last page: {}",
        last.stderr
    );

    let prefixed = sb.ok(&["--json", "ls", "b/"]).json_lines();
    let keys: Vec<&str> = prefixed
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b/1", "b/2", "b/3"]);
    assert!(sb.ok(&["ls", "zzz"]).stdout.is_empty());

    // -q hides the paging hint but not the data.
    let quiet = sb.ok(&["-q", "ls", "--limit", "1"]);
    assert_eq!(quiet.text().lines().count(), 1);
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);

    // A zero count says what is allowed, not the standard library's parse error.
    for args in [&["ls", "--limit", "0"][..], &["search", "--limit", "0"]] {
        let run = sb.fails(args, 2);
        assert!(
            run.stderr.contains("'--limit <N>': must be at least 1"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("non-zero type"), "{}", run.stderr);
    }

    // The hint quotes a key as a shell needs it, and following it continues the listing.
    for key in ["d e", "d it's"] {
        let run = sb.run_with_stdin(&["put", key], b"x");
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let page = sb.ok(&["ls", "d", "--limit", "1"]);
    assert!(
        page.stderr.contains("continue with --after 'd e'"),
        "{}",
        page.stderr
    );
    let hint = page.stderr.trim().rsplit("continue with ").next().unwrap();
    let shell = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("\"$0\" ls d --limit 1 {hint}"))
        .arg(env!("CARGO_BIN_EXE_stowage"))
        .current_dir(sb.path())
        .env_remove("STOWAGE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        "d it's  v1  1 B\n",
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );
}

fn keys_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn search_filters_by_tag_attr_range_type_prefix_and_time() {
    let sb = Sandbox::new();
    let put = |args: &[&str]| {
        let mut full = vec!["--json", "put"];
        full.extend_from_slice(args);
        let run = sb.run_with_stdin(&full, b"{}");
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json()
    };
    let first = put(&[
        "t/a",
        "--tag",
        "prod",
        "--attr",
        "status=200",
        "--content-type",
        "application/json",
    ]);
    put(&[
        "t/b",
        "--tag",
        "prod",
        "--tag",
        "eu",
        "--attr",
        "status=404",
    ]);
    put(&[
        "t/c",
        "--tag",
        "dev",
        "--attr",
        "status=500",
        "--attr",
        "who=ann",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let last = put(&["u/d", "--tag", "prod", "--attr", "status=\"200\""]);

    let q = |args: &[&str]| {
        let mut full = vec!["--json", "search"];
        full.extend_from_slice(args);
        keys_of(&sb.ok(&full).json_lines())
    };
    assert_eq!(q(&[]), ["t/a", "t/b", "t/c", "u/d"]);
    assert_eq!(q(&["--tag", "prod"]), ["t/a", "t/b", "u/d"]);
    assert_eq!(q(&["--tag", "prod", "--tag", "eu"]), ["t/b"]);
    // 200 (a number) is not "200" (a string).
    assert_eq!(q(&["--attr", "status=200"]), ["t/a"]);
    assert_eq!(q(&["--attr", "status=\"200\""]), ["u/d"]);
    assert_eq!(q(&["--attr", "who=ann"]), ["t/c"]);
    assert_eq!(q(&["--attr-min", "status=300"]), ["t/b", "t/c"]);
    assert_eq!(
        q(&["--attr-min", "status=200", "--attr-max", "status=500"]),
        ["t/a", "t/b"]
    );
    assert_eq!(q(&["--content-type", "application/json"]), ["t/a"]);
    assert_eq!(q(&["--prefix", "t/", "--tag", "prod"]), ["t/a", "t/b"]);
    assert_eq!(
        q(&["--order", "key", "--desc"]),
        ["u/d", "t/c", "t/b", "t/a"]
    );
    assert_eq!(
        q(&["--order", "updated", "--desc", "--limit", "1"]),
        ["u/d"]
    );
    assert_eq!(q(&["--limit", "2"]), ["t/a", "t/b"]);

    let last_time = last["updated_at"].as_str().unwrap();
    assert_eq!(q(&["--since", last_time]), ["u/d"]);
    // The same instant written with an offset from UTC (RFC 3339 allows any).
    let hour: u32 = last_time[11..13].parse().unwrap();
    let (shifted, offset) = if hour < 23 {
        (hour + 1, "+01:00")
    } else {
        (hour - 1, "-01:00")
    };
    let with_offset = format!(
        "{}{shifted:02}{}{offset}",
        &last_time[..11],
        last_time[13..].trim_end_matches('Z')
    );
    assert_eq!(q(&["--since", &with_offset]), ["u/d"], "{with_offset}");
    let until = q(&["--until", last_time]);
    assert_eq!(until, ["t/a", "t/b", "t/c"]);
    assert_eq!(
        q(&[
            "--since",
            first["updated_at"].as_str().unwrap(),
            "--until",
            last_time
        ])
        .len(),
        3
    );

    // Deleted records are hidden unless asked for.
    sb.ok(&["rm", "t/c"]);
    assert_eq!(q(&["--tag", "dev"]), Vec::<String>::new());
    assert_eq!(q(&["--tag", "dev", "--deleted"]), ["t/c"]);

    let text = sb.ok(&["search", "--tag", "eu"]).text();
    assert!(text.starts_with("t/b") && text.contains("v1"), "{text}");

    let run = sb.fails(&["search", "--since", "yesterday"], 2);
    assert!(run.stderr.contains("yesterday"), "{}", run.stderr);
    sb.fails(&["search", "--attr", "novalue"], 2);
    sb.fails(&["search", "--order", "size"], 2);
}

#[test]
fn get_reads_inclusive_byte_ranges() {
    let sb = Sandbox::new();
    let payload = all_bytes(BIG);
    let file = sb.write("in.bin", &payload);
    sb.ok(&["put", "blob", file.to_str().unwrap()]);

    assert_eq!(
        sb.ok(&["get", "blob", "--range", "2-5"]).stdout,
        &payload[2..6]
    );
    assert_eq!(
        sb.ok(&["get", "blob", "--range", "0-0"]).stdout,
        &payload[..1]
    );
    let tail_start = BIG - 300_000;
    let tail = sb.ok(&["get", "blob", "--range", &format!("{tail_start}-")]);
    assert_eq!(tail.stdout, &payload[tail_start..]);
    // Across a chunk boundary (256 KiB).
    let run = sb.ok(&["get", "blob", "--range", "262100-262200"]);
    assert_eq!(run.stdout, &payload[262100..262201]);
    // An end past the payload is clamped, as in HTTP.
    let run = sb.ok(&[
        "get",
        "blob",
        "--range",
        &format!("{}-{}", BIG - 3, BIG + 100),
    ]);
    assert_eq!(run.stdout, &payload[BIG - 3..]);

    sb.ok(&["get", "blob", "--range", "10-19", "-o", "part.bin"]);
    assert_eq!(
        std::fs::read(sb.join("part.bin")).unwrap(),
        &payload[10..20]
    );

    sb.fails(&["get", "blob", "--range", "9-3"], 2);
    sb.fails(&["get", "blob", "--range", "abc"], 2);
    sb.fails(&["get", "blob", "--range", &format!("{}-", BIG + 10)], 2);
}

#[test]
fn get_to_a_file_is_all_or_nothing() {
    let sb = Sandbox::new();
    sb.run_with_stdin(&["put", "k"], b"payload bytes");
    sb.ok(&["get", "k", "-o", "out.txt"]);
    assert_eq!(std::fs::read(sb.join("out.txt")).unwrap(), b"payload bytes");

    let run = sb.ok(&["--json", "get", "k", "-o", "out2.txt"]);
    assert_eq!(run.json()["key"], "k");
    let run = sb.ok(&["get", "k", "--output", "out3.txt"]);
    assert!(run.text().contains("-> out3.txt"), "{}", run.text());

    // A failed get leaves an existing target untouched and no temporary file behind.
    sb.write("keep.txt", b"precious");
    sb.fails(&["get", "missing", "-o", "keep.txt"], 3);
    assert_eq!(std::fs::read(sb.join("keep.txt")).unwrap(), b"precious");
    sb.fails(&["get", "missing", "-o", "never.txt"], 3);
    assert!(!sb.join("never.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An existing target is replaced whole.
    sb.ok(&["get", "k", "-o", "keep.txt"]);
    assert_eq!(
        std::fs::read(sb.join("keep.txt")).unwrap(),
        b"payload bytes"
    );

    // A directory is not a file.
    std::fs::create_dir(sb.join("adir")).unwrap();
    sb.fails(&["get", "k", "-o", "adir"], 2);
}

/// `-o` follows a symbolic link to the file it names, writes into a named pipe or a device
/// instead of replacing it, and reports a full device as a failed write.
#[cfg(unix)]
#[test]
fn get_writes_through_links_pipes_and_devices() {
    use std::os::unix::fs::{symlink, FileTypeExt};
    use std::process::{Command, Stdio};
    let sb = Sandbox::new();
    let payload = all_bytes(300_000);
    sb.run_with_stdin(&["put", "k"], &payload);

    // A link keeps pointing at its file, which gets the payload.
    sb.write("real.bin", b"old");
    symlink("real.bin", sb.join("link.bin")).unwrap();
    sb.ok(&["get", "k", "-o", "link.bin"]);
    assert!(std::fs::symlink_metadata(sb.join("link.bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(sb.join("real.bin")).unwrap(), payload);
    // A link to nothing names no file to replace.
    symlink("missing.bin", sb.join("dangling")).unwrap();
    sb.fails(&["get", "k", "-o", "dangling"], 2);
    assert!(!sb.join("missing.bin").exists());

    // A named pipe is written into, and stays a pipe.
    let made = Command::new("mkfifo")
        .arg(sb.join("pipe"))
        .status()
        .expect("running mkfifo");
    assert!(made.success());
    // Read by another process, with a time limit so a get that replaced the pipe instead
    // fails the test rather than leaving the reader waiting for a writer forever.
    let reader = Command::new("timeout")
        .args(["60", "cat", "pipe"])
        .current_dir(sb.path())
        .stdout(std::fs::File::create(sb.join("from-pipe.bin")).unwrap())
        .spawn()
        .expect("running cat");
    sb.ok(&["get", "k", "-o", "pipe"]);
    assert!(reader.wait_with_output().unwrap().status.success());
    let read = std::fs::read(sb.join("from-pipe.bin")).unwrap();
    assert_eq!(read.len(), payload.len());
    assert!(read == payload, "the pipe's reader got other bytes");
    assert!(std::fs::symlink_metadata(sb.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());

    // A device that refuses the bytes is an error, on stdout as through -o.
    if std::path::Path::new("/dev/full").exists() {
        let out = sb
            .command(&["get", "k"])
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("No space left"), "{stderr}");
        assert!(stderr.contains("writing stdout"), "{stderr}");
        let run = sb.fails(&["get", "k", "-o", "/dev/full"], 1);
        assert!(run.stderr.contains("writing /dev/full"), "{}", run.stderr);
    }
}

/// A file `-o` replaces keeps its permission bits (a private file stays private), and one this
/// user may not write to is refused, left as it was.
#[cfg(unix)]
#[test]
fn get_keeps_the_mode_of_a_replaced_file_and_refuses_a_read_only_one() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.run_with_stdin(&["put", "k"], b"new secret");
    let private = sb.write("private.txt", b"old secret");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    sb.ok(&["get", "k", "-o", "private.txt"]);
    assert_eq!(std::fs::read(&private).unwrap(), b"new secret");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);

    let read_only = sb.write("read-only.txt", b"keep me");
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o444)).unwrap();
    // Root may write any file, as `cp` would; then the file is replaced and stays read-only.
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .open(&read_only)
        .is_ok();
    if writable {
        sb.ok(&["get", "k", "-o", "read-only.txt"]);
        assert_eq!(std::fs::read(&read_only).unwrap(), b"new secret");
    } else {
        let run = sb.fails(&["get", "k", "-o", "read-only.txt"], 2);
        assert!(run.stderr.contains("not writable"), "{}", run.stderr);
        assert_eq!(std::fs::read(&read_only).unwrap(), b"keep me");
    }
    let mode = std::fs::metadata(&read_only).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o444);
}

#[test]
fn namespaces_are_isolated() {
    let sb = Sandbox::new();
    let run = sb.run_with_stdin(
        &["--namespace", "alpha", "--json", "put", "shared/key"],
        b"from alpha",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["namespace"], "alpha");
    let run = sb.run_with_stdin(&["put", "shared/key", "--namespace", "beta"], b"from beta");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.text().starts_with("put beta/shared/key v1"),
        "{}",
        run.text()
    );

    assert_eq!(
        sb.ok(&["--namespace", "alpha", "get", "shared/key"]).stdout,
        b"from alpha"
    );
    assert_eq!(
        sb.ok(&["--namespace", "beta", "get", "shared/key"]).stdout,
        b"from beta"
    );
    sb.fails(&["get", "shared/key"], 3);
    sb.fails(&["--namespace", "gamma", "head", "shared/key"], 3);
    assert!(sb.ok(&["ls"]).stdout.is_empty());
    assert!(sb.ok(&["--namespace", "gamma", "search"]).stdout.is_empty());

    sb.ok(&["--namespace", "alpha", "rm", "shared/key"]);
    assert_eq!(
        sb.ok(&["--namespace", "beta", "get", "shared/key"]).stdout,
        b"from beta"
    );
    sb.fails(&["--namespace", "beta", "purge", "other"], 3);
    sb.ok(&["--namespace", "alpha", "purge", "shared/key"]);
    assert_eq!(
        sb.ok(&["--namespace", "beta", "get", "shared/key"]).stdout,
        b"from beta"
    );
}

#[test]
fn quiet_hides_confirmations_and_verbose_traces_backend_calls() {
    let sb = Sandbox::new();
    let run = sb.run_with_stdin(&["-q", "put", "k"], b"x");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty() && run.stderr.is_empty(), "{run:?}");

    let run = sb.run_with_stdin(&["-v", "put", "k"], b"y");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.text().starts_with("put default/k v2"), "{}", run.text());
    assert!(
        run.stderr.contains("put") && run.stderr.contains("provider"),
        "{}",
        run.stderr
    );

    // Without -v nothing is traced.
    let run = sb.ok(&["head", "k"]);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(run.text().contains("version:      2"), "{}", run.text());
}

#[test]
fn a_reader_closing_stdout_early_is_not_an_error() {
    use std::io::Read;
    use std::process::{Command, Stdio};

    let sb = Sandbox::new();
    let file = sb.write("in.bin", all_bytes(BIG));
    sb.ok(&["put", "blob", file.to_str().unwrap()]);
    // Like `stowage get blob | head -c 10`: far more than a pipe buffer, then the reader leaves.
    let mut child = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["get", "blob"])
        .current_dir(sb.path())
        .env_remove("STOWAGE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(first, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` with stderr on `/dev/full` (every write fails with "no space left") and returns
/// its exit code; a process still running after two minutes has hung and fails the test.
#[cfg(target_os = "linux")]
fn code_with_stderr_full(mut cmd: std::process::Command, stdin: &[u8]) -> Option<i32> {
    use std::io::Write;
    use std::process::Stdio;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("stowage hung with an unwritable stderr");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_unwritable_stderr_loses_only_the_messages() {
    let sb = Sandbox::new();
    sb.run_with_stdin(&["put", "k"], b"first");
    // The error line cannot be written: the exit code is still the error's (was a panic, 101).
    assert_eq!(
        code_with_stderr_full(sb.command(&["head", "absent"]), b""),
        Some(3)
    );
    // Traced calls (-v) and a $RUST_LOG that also logs SQLite's worker thread (a panic there
    // left the command waiting for ever) write nothing but do their work.
    assert_eq!(
        code_with_stderr_full(sb.command(&["-v", "put", "k"]), b"second"),
        Some(0)
    );
    let mut cmd = sb.command(&["put", "k"]);
    cmd.env("RUST_LOG", "trace");
    assert_eq!(code_with_stderr_full(cmd, b"third"), Some(0));
    let run = sb.ok(&["get", "k"]);
    assert_eq!(run.stdout, b"third");
    assert_eq!(sb.ok(&["--json", "head", "k"]).json()["version"], 3);
}

#[test]
fn quiet_outranks_rust_log() {
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["-q", "ls"]);
    cmd.env("RUST_LOG", "trace");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verify_reports_damaged_payloads_and_exits_1() {
    let sb = Sandbox::new();
    let marker = b"stowage-cli-corruption-marker-5f0c2a9e-payload-bytes";
    let run = sb.run_with_stdin(&["put", "victim"], marker);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // SQLite keeps recent writes in its write-ahead log, whose frames are checksummed (editing
    // one would drop every later frame). A write over 1000 pages makes SQLite checkpoint the
    // log into the database file, and the next write starts the log afresh.
    let filler = sb.write("filler.bin", all_bytes(6 << 20));
    sb.ok(&["put", "filler", filler.to_str().unwrap()]);
    sb.run_with_stdin(&["put", "bystander"], b"left alone");

    // Flip one byte of the stored payload in the database file.
    let db = sb.join("stowage-data/stowage.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("payload bytes not found in the database file (not checkpointed?)");
    bytes[at + 10] ^= 0x20;
    std::fs::write(&db, &bytes).unwrap();

    let run = sb.run(&["--json", "verify"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    sandbox::assert_one_error_line(&run.stderr);
    assert!(
        run.stderr.contains("verify found 1 problem"),
        "{}",
        run.stderr
    );
    let report = run.json();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["key"], "victim", "{report}");

    let run = sb.run(&["verify"]);
    assert_eq!(run.code, 1);
    assert!(run.text().contains("victim"), "{}", run.text());
    assert_eq!(sb.ok(&["get", "bystander"]).stdout, b"left alone");
    // Reading the damaged record fails rather than serving wrong bytes.
    let run = sb.run(&["get", "victim"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
}

#[test]
fn warnings_show_on_stderr_by_default_and_ordinary_runs_print_none() {
    let sb = Sandbox::new();
    sb.write(
        "fs.toml",
        "[storage]\nprovider = \"fs\"\n[storage.config]\nroot = \"fs\"\n",
    );
    for config in [None, Some("fs.toml")] {
        let with = |args: &[&'static str]| -> Vec<&'static str> {
            let mut full = config.map_or(vec![], |c| vec!["--config", c]);
            full.extend_from_slice(args);
            full
        };
        for key in ["a", "b"] {
            let run = sb.run_with_stdin(&with(&["put", key, "-"]), key.as_bytes());
            assert_eq!(run.code, 0, "{}", run.stderr);
            assert_eq!(run.stderr, "", "an ordinary put prints nothing on stderr");
        }
        for args in [&["get", "a"][..], &["ls"], &["head", "b"], &["verify"]] {
            let run = sb.ok(&with(args));
            assert_eq!(run.stderr, "", "{args:?} printed on stderr");
        }
    }
    // Damage in the middle of the fs index log: the provider repairs it and logs a warning,
    // which shows without -v; the command itself succeeds.
    let log = sb.join("fs/index.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let run = sb.ok(&["--config", "fs.toml", "ls"]);
    assert_eq!(run.text(), "a  v1  1 B\n");
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("corrupt record"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // -q keeps stderr for failures only.
    let damaged = sb.join("fs/index.log");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes.extend_from_slice(b"\x01\x02\x03");
    std::fs::write(&damaged, bytes).unwrap();
    let run = sb.ok(&["-q", "--config", "fs.toml", "ls"]);
    assert_eq!(run.stderr, "", "-q shows no warnings");
}

#[test]
fn counts_are_singular_for_one() {
    let sb = Sandbox::new();
    let run = sb.run_with_stdin(&["put", "one"], b"x");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let head = sb.ok(&["head", "one"]).text();
    assert!(head.contains("size:         1 B (1 byte)\n"), "{head}");
    let run = sb.run_with_stdin(&["put", "two"], b"xy");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let head = sb.ok(&["head", "two"]).text();
    assert!(head.contains("(2 bytes)"), "{head}");
    let purge = sb.ok(&["purge", "one"]).text();
    assert!(purge.contains(": 1 version removed"), "{purge}");
    let gc = sb.ok(&["gc"]).text();
    assert!(
        gc.starts_with("gc: removed 1 unreferenced payload ("),
        "{gc}"
    );
    let search = sb.ok(&["search", "--limit", "1"]);
    let _ = sb.run_with_stdin(&["put", "three"], b"xyz");
    let search_more = sb.ok(&["search", "--limit", "1"]);
    assert!(search.stderr.is_empty(), "{}", search.stderr);
    assert!(
        search_more.stderr.contains("than the 1 record shown"),
        "{}",
        search_more.stderr
    );
}

#[test]
fn tags_content_types_and_attribute_names_refuse_control_characters() {
    let sb = Sandbox::new();
    let input = sb.write("in.txt", b"x");
    let input = input.to_str().unwrap();
    for (args, field) in [
        (vec!["--tag", "ok\nkey: forged"], "tag"),
        (vec!["--content-type", "text/plain\r"], "content type"),
        (vec!["--attr", "a\tb=1"], "attribute name"),
        (vec!["--tag", "bell\u{7}"], "tag"),
    ] {
        let mut full = vec!["put", "k", input];
        full.extend_from_slice(&args);
        let run = sb.fails(&full, 2);
        assert!(
            run.stderr.contains(field) && run.stderr.contains("control character"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!sb.has_default_data_dir(), "{args:?} created stowage-data");
    }
    // Other characters beyond ASCII are fine.
    sb.ok(&[
        "put",
        "k",
        input,
        "--tag",
        "entwurf-ü",
        "--content-type",
        "text/plain; charset=utf-8",
    ]);
}

#[test]
fn a_range_must_start_inside_the_payload() {
    let sb = Sandbox::new();
    for (key, payload) in [("two", &b"ab"[..]), ("one", b"a"), ("empty", b"")] {
        let run = sb.run_with_stdin(&["put", key, "-"], payload);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert_eq!(sb.ok(&["get", "two", "--range", "1-"]).stdout, b"b");
    assert_eq!(sb.ok(&["get", "two", "--range", "1-99"]).stdout, b"b");
    let run = sb.fails(&["get", "two", "--range", "2-"], 2);
    assert!(run.stderr.contains("has 2 bytes"), "{}", run.stderr);
    let run = sb.fails(&["get", "one", "--range", "1-", "-o", "out.bin"], 2);
    assert!(
        run.stderr.contains("has 1 byte (the last is byte 0)"),
        "{}",
        run.stderr
    );
    assert!(!sb.join("out.bin").exists());
    sb.fails(&["get", "one", "--range", "5-9"], 2);
    // `0-` of an empty payload reads it whole (nothing); any later start is past it.
    assert_eq!(sb.ok(&["get", "empty", "--range", "0-"]).stdout, b"");
    let run = sb.fails(&["get", "empty", "--range", "1-"], 2);
    assert!(run.stderr.contains("byte 1"), "{}", run.stderr);
}

#[test]
fn warnings_show_with_every_verbosity_but_quiet() {
    let sb = Sandbox::new();
    sb.write(
        "fs.toml",
        "[storage]\nprovider = \"fs\"\n[storage.config]\nroot = \"fs\"\n",
    );
    for key in ["a", "b"] {
        let run = sb.run_with_stdin(&["--config", "fs.toml", "put", key, "-"], key.as_bytes());
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    // Junk appended to the fs index log: the provider repairs it and warns.
    let damage = || {
        let log = sb.join("fs/index.log");
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(b"\x01\x02\x03");
        std::fs::write(&log, bytes).unwrap();
    };
    for verbosity in [&[][..], &["-v"], &["-vv"], &["--json"]] {
        damage();
        let mut args = verbosity.to_vec();
        args.extend_from_slice(&["--config", "fs.toml", "ls"]);
        let run = sb.ok(&args);
        assert!(
            run.stderr.contains("WARN") && run.stderr.contains("index"),
            "{verbosity:?} hid the warning: {}",
            run.stderr
        );
    }
    damage();
    let run = sb.ok(&["-q", "--config", "fs.toml", "ls"]);
    assert_eq!(run.stderr, "", "-q shows no warnings");
}

#[test]
fn attr_minus_zero_is_zero_and_big_integers_inside_values_are_refused() {
    let sb = Sandbox::new();
    let run = sb.run_with_stdin(&["put", "k", "--attr", "n=-0"], b"x");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let head = sb.ok(&["--json", "head", "k"]).json();
    assert_eq!(head["attributes"]["n"], serde_json::json!(0), "{head}");
    for filter in [
        ["--attr", "n=-0"],
        ["--attr", "n=0"],
        ["--attr-min", "n=-0"],
    ] {
        let mut args = vec!["search"];
        args.extend_from_slice(&filter);
        assert_eq!(sb.ok(&args).text(), "k  v1  1 B\n", "{filter:?}");
    }
    let run = sb.run_with_stdin(
        &["put", "big", "--attr", r#"n={"x":99999999999999999999}"#],
        b"x",
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("99999999999999999999") && run.stderr.contains("beyond 64 bits"),
        "{}",
        run.stderr
    );
    sb.fails(&["head", "big"], 3);
}

/// A key that exists but reads as not found says why: deleted (and what brings it back), a
/// version that is a deletion marker, one not written yet. The exit code stays 3.
#[test]
fn not_found_says_what_the_history_shows() {
    let sb = Sandbox::new();
    sb.run_with_stdin(&["put", "k"], b"one");
    sb.ok(&["rm", "k"]);
    for args in [&["head", "k"][..], &["get", "k"], &["rm", "k"]] {
        let run = sb.fails(args, 3);
        assert!(
            run.stderr.contains("record default/k is deleted")
                && run.stderr.contains("v2")
                && run.stderr.contains("stowage restore"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = sb.fails(&["get", "k", "--version", "2"], 3);
    assert!(run.stderr.contains("deletion marker"), "{}", run.stderr);
    let run = sb.fails(&["head", "k", "--version", "9"], 3);
    assert!(
        run.stderr.contains("no version 9: its latest is v2"),
        "{}",
        run.stderr
    );
    // A key with no history at all: the plain message.
    let run = sb.fails(&["get", "never"], 3);
    assert!(
        run.stderr.contains("record default/never not found"),
        "{}",
        run.stderr
    );
    // Restored, it reads again.
    sb.ok(&["restore", "k"]);
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"one");
}

/// Metadata the command line cannot mean: a name given twice, an empty tag or content type.
/// Refused with exit 2, and nothing is written.
#[test]
fn ambiguous_or_empty_metadata_is_refused() {
    let sb = Sandbox::new();
    let run = sb.fails(&["put", "k", "-", "--attr", "n=1", "--attr", "n=2"], 2);
    assert!(run.stderr.contains("given twice"), "{}", run.stderr);
    sb.fails(&["put", "k", "-", "--tag", ""], 2);
    sb.fails(&["put", "k", "-", "--content-type", ""], 2);
    sb.fails(&["search", "--tag", ""], 2);
    sb.fails(&["head", "k"], 3);
}
