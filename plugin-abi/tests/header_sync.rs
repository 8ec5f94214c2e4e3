//! Keeps `include/stowage_plugin.h` identical to the Rust definitions: the same structs with the
//! same fields in the same order, the same sizes and offsets (measured by compiling a C program
//! against the header with `cc`), and the same constants.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use stowage_plugin_abi::*;

/// (struct, Rust size, [(field, Rust offset)]) for every struct of the contract.
macro_rules! layouts {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {
        vec![$((
            stringify!($ty),
            size_of::<$ty>(),
            vec![$((stringify!($field), offset_of!($ty, $field))),*],
        )),*]
    };
}

type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

fn rust_layouts() -> Vec<Layout> {
    layouts! {
        StowageBytes { ptr, len }
        StowageOwned { ptr, len, free }
        StowageStatus { code, message }
        StowageProgress { ctx, set_total, inc }
        StowageGetOptions { struct_size, flags, version, range_start, range_end }
        StowageRecordInfo {
            struct_size, flags, version, size, created_at, updated_at, deleted_at, hash,
            rest_json,
        }
        StowageBackendVTable {
            struct_size, release, capabilities, initialize, put_open, put_write, put_finish,
            put_abort, get_open, get_read, get_close, head, list, delete, search, versions,
            restore, purge, gc, verify, namespaces, get_first,
        }
        StowageProviderVTable {
            struct_size, name, description, factory, config_schema, capabilities, validate,
            create, backend,
        }
        StowagePluginDescriptor {
            struct_size, abi_major, abi_minor, target, plugin_name, plugin_version, providers,
            provider_count,
        }
    }
}

fn header_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/stowage_plugin.h")
}

/// The structs of the header: name → field names in order.
fn header_structs(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find("typedef struct ") {
        let after = &rest[start + "typedef struct ".len()..];
        let name = after
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let open = after.find('{').expect("struct without a body");
        let close = after.find('}').expect("struct without a closing brace");
        let fields = after[open + 1..close]
            .split(';')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            // Comments after a field end up before the next one.
            .map(|f| f.rsplit("*/").next().unwrap().trim())
            .filter(|f| !f.is_empty())
            .map(|f| {
                // `uint8_t hash[32]` declares `hash`.
                let f = f.split('[').next().unwrap();
                f.rsplit(|c: char| c.is_whitespace() || c == '*')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        out.insert(name, fields);
        rest = &after[close..];
    }
    out
}

fn header_defines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|l| {
            let mut parts = l.splitn(2, ' ');
            Some((parts.next()?.to_string(), parts.next()?.trim().to_string()))
        })
        .collect()
}

#[test]
fn header_declares_the_same_structs_and_fields_in_the_same_order() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let header = header_structs(&text);
    let rust = rust_layouts();
    let rust_names: Vec<&str> = rust.iter().map(|(n, _, _)| *n).collect();
    let header_names: Vec<&str> = header.keys().map(String::as_str).collect();
    let mut sorted = rust_names.clone();
    sorted.sort();
    assert_eq!(
        header_names, sorted,
        "the header and plugin-abi/src/lib.rs declare different structs"
    );
    for (name, _, fields) in &rust {
        let rust_fields: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
        let header_fields: Vec<&str> = header[*name].iter().map(String::as_str).collect();
        assert_eq!(
            header_fields, rust_fields,
            "fields of {name} differ between the header and Rust"
        );
    }
}

#[test]
fn header_constants_match_rust() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let defines = header_defines(&text);
    assert_eq!(
        defines["STOWAGE_ENTRY_SYMBOL"],
        format!("\"{ENTRY_SYMBOL}\"")
    );
    assert_eq!(defines["STOWAGE_ABI_MAJOR"], ABI_MAJOR.to_string());
    assert_eq!(defines["STOWAGE_ABI_MINOR"], ABI_MINOR.to_string());
    let codes = [
        ("STOWAGE_OK", status::OK),
        ("STOWAGE_INVALID_KEY", status::INVALID_KEY),
        ("STOWAGE_INVALID_NAMESPACE", status::INVALID_NAMESPACE),
        ("STOWAGE_INVALID_INPUT", status::INVALID_INPUT),
        ("STOWAGE_NOT_FOUND", status::NOT_FOUND),
        ("STOWAGE_CONFLICT", status::CONFLICT),
        ("STOWAGE_INVALID_CONFIG", status::INVALID_CONFIG),
        ("STOWAGE_UNSUPPORTED", status::UNSUPPORTED),
        ("STOWAGE_PROVIDER_EXISTS", status::PROVIDER_EXISTS),
        ("STOWAGE_UNKNOWN_PROVIDER", status::UNKNOWN_PROVIDER),
        ("STOWAGE_CORRUPT", status::CORRUPT),
        ("STOWAGE_LOCKED", status::LOCKED),
        ("STOWAGE_IO", status::IO),
        ("STOWAGE_BACKEND", status::BACKEND),
        ("STOWAGE_PLUGIN", status::PLUGIN),
        ("STOWAGE_PANICKED", status::PANICKED),
    ];
    let header_codes = defines.keys().filter(|k| {
        k.starts_with("STOWAGE_")
            && defines[*k].parse::<u32>().is_ok()
            && !k.starts_with("STOWAGE_ABI_")
            && !k.starts_with("STOWAGE_FLAG_")
    });
    assert_same_values(&defines, header_codes, &codes, "status codes");
    let flag_bits = [
        ("STOWAGE_FLAG_GET_VERSION", flags::GET_VERSION),
        ("STOWAGE_FLAG_GET_RANGE", flags::GET_RANGE),
        ("STOWAGE_FLAG_GET_RANGE_END", flags::GET_RANGE_END),
        ("STOWAGE_FLAG_INFO_DELETED", flags::INFO_DELETED),
    ];
    let header_flags = defines.keys().filter(|k| k.starts_with("STOWAGE_FLAG_"));
    assert_same_values(&defines, header_flags, &flag_bits, "flags");
}

/// The header defines exactly the `rust` constants among `header` (no more), with their values.
fn assert_same_values<'a>(
    defines: &BTreeMap<String, String>,
    header: impl Iterator<Item = &'a String>,
    rust: &[(&str, u32)],
    what: &str,
) {
    assert_eq!(
        header.count(),
        rust.len(),
        "the header has {what} Rust lacks"
    );
    for (name, value) in rust {
        assert_eq!(defines[*name], value.to_string(), "{name}");
    }
}

#[test]
fn header_layout_matches_rust_when_compiled_by_cc() {
    let dir = std::env::temp_dir().join(format!("stowage-header-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut program = String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"stowage_plugin.h\"\nint main(void) {\n");
    for (name, _, fields) in rust_layouts() {
        program.push_str(&format!("    printf(\"{name} %zu\\n\", sizeof({name}));\n"));
        for (field, _) in fields {
            program.push_str(&format!(
                "    printf(\"{name}.{field} %zu\\n\", offsetof({name}, {field}));\n"
            ));
        }
    }
    program.push_str("    return 0;\n}\n");
    let source = dir.join("layout.c");
    let binary = dir.join("layout");
    std::fs::write(&source, program).unwrap();
    let include = header_path().parent().unwrap().to_path_buf();
    let status = Command::new("cc")
        .arg(format!("-DSTOWAGE_TARGET=\"{TARGET}\""))
        .arg("-I")
        .arg(&include)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .status()
        .expect("this test needs a C compiler as `cc` on PATH");
    assert!(status.success(), "the header does not compile");
    let output = Command::new(&binary).output().unwrap();
    let measured: BTreeMap<String, usize> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    for (name, size, fields) in rust_layouts() {
        assert_eq!(
            measured[name], size,
            "sizeof({name}) differs between C and Rust"
        );
        for (field, offset) in fields {
            assert_eq!(
                measured[&format!("{name}.{field}")],
                offset,
                "offsetof({name}, {field}) differs"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
