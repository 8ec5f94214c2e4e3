//! `stowage put KEY [FILE|-]`: writes a new version from a file or stdin, streaming.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use stowage_core::{Body, Error, Key, Metadata, PutMode, Result, Version};

use crate::attr_arg::AttrArg;
use crate::context::Context;

/// Arguments of `stowage put`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key, e.g. `notes/a.txt`.
    pub key: String,
    /// File to store; `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    /// Add a tag (repeatable).
    #[arg(long = "tag", value_name = "TAG", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub tags: Vec<String>,
    /// Set an attribute (repeatable); VALUE is JSON when it parses, else a string.
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attrs: Vec<AttrArg>,
    /// MIME type of the payload, e.g. `application/json`.
    #[arg(long, value_name = "TYPE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub content_type: Option<String>,
    /// Write only if the key has no live version (exit 4 otherwise).
    #[arg(long, group = "precondition")]
    pub if_absent: bool,
    /// Write only if the key's latest version is N (exit 4 otherwise).
    #[arg(long, value_name = "N", group = "precondition")]
    pub if_version: Option<Version>,
    /// "I edited version N": merging providers merge, others act as --if-version N.
    #[arg(long, value_name = "N", group = "precondition")]
    pub base_version: Option<Version>,
}

impl Args {
    fn mode(&self) -> PutMode {
        if self.if_absent {
            PutMode::Create
        } else if let Some(v) = self.if_version {
            PutMode::IfVersion(v)
        } else if let Some(v) = self.base_version {
            PutMode::Base(v)
        } else {
            PutMode::Overwrite
        }
    }

    fn metadata(&self) -> Result<Metadata> {
        let mut meta = Metadata::new();
        meta.content_type = self.content_type.clone();
        meta.tags.extend(self.tags.iter().cloned());
        for attr in &self.attrs {
            // One value is kept per name: a second `--attr` of the name is refused rather than
            // silently winning, as a JSON object repeating a key is.
            if let Some(first) = meta
                .attributes
                .insert(attr.name.clone(), attr.value.clone())
            {
                return Err(Error::invalid_input(format!(
                    "attribute {:?} is given twice (--attr {}={first} and --attr {}={}); give each name once",
                    attr.name, attr.name, attr.name, attr.value
                )));
            }
        }
        Ok(meta)
    }
}

/// Streams the payload into a new version and prints it.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key.clone())?;
    let metadata = args.metadata()?;
    metadata.validate()?;
    // Open the input before the store so a missing file creates no data directory.
    let body = match args.file.as_deref() {
        Some(path) if path.as_os_str() != "-" => open_file(path).await?,
        named_stdin => {
            if named_stdin.is_none() && std::io::stdin().is_terminal() {
                return Err(Error::invalid_input(
                    "no FILE given and stdin is a terminal: name a FILE, pipe the payload in, \
                     or pass `-` to type it",
                ));
            }
            Body::from_reader(tokio::io::stdin(), None)
        }
    };
    let mode = args.mode();
    let handle = ctx.handle().await?;
    let info = handle.put_with(key.as_str(), body, metadata, mode).await?;
    ctx.out.written("put", &info)
}

async fn open_file(path: &Path) -> Result<Body> {
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::invalid_input(format!("input file {} does not exist", path.display()))
        } else {
            Error::io(format!("opening input file {}", path.display()), e)
        }
    })?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| Error::io(format!("reading input file {}", path.display()), e))?;
    if meta.is_dir() {
        return Err(Error::invalid_input(format!(
            "input {} is a directory; put stores one file per key",
            path.display()
        )));
    }
    // A pipe or device reports length 0: only a regular file's length is its size.
    let size_hint = meta.is_file().then_some(meta.len());
    Ok(Body::from_reader(file, size_hint))
}
