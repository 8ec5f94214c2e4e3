//! How one record lives in one Automerge document: the document schema, the deterministic
//! genesis change, reconciling a payload and metadata into the document (only what changed
//! produces operations), and reading the record back at any point of its history.
//!
//! Root map of every document:
//!
//! | field | Automerge type | meaning |
//! |---|---|---|
//! | `ns`, `key` | string | the record's namespace and key (written by the genesis change) |
//! | `body` | map / list / scalar / bytes / blob ref | a JSON payload as Automerge objects, a byte scalar, or (a byte payload of at least `blob_min_bytes`) a [`BlobRef`] to a payload file |
//! | `content_type` | string (absent when none) | `Metadata::content_type` |
//! | `tags` | map tag → `true` | the tag set; concurrent adds and removes merge per tag |
//! | `attributes` | map name → JSON | attributes, reconciled like a JSON body |
//! | `deleted` | timestamp (absent when live) | set by `delete`, cleared by `put`/`restore` |

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{
    ActorId, Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT,
};
use stowage_core::{is_json_content_type, Conflict, Key, Metadata, Namespace, Timestamp};

use super::blobs::{BlobRef, BLOB_REF_TYPE_CODE};

/// The record content a put brings, parsed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Payload {
    /// A JSON payload (`application/json` or `+json`), reconciled field by field.
    Json(serde_json::Value),
    /// Any other payload, one byte scalar.
    Bytes(Vec<u8>),
    /// A byte payload in a file under `blobs/`: the document holds one scalar of the unknown
    /// Automerge type [`BLOB_REF_TYPE_CODE`] naming its hash and size.
    Blob(BlobRef),
}

impl Payload {
    /// Parses a payload by its content type. A payload declared JSON that does not parse is
    /// kept as bytes. JSON that parses but would not read back as written (an integer beyond
    /// 64 bits, a number with more precision than an `f64`, a repeated key) is refused, so no
    /// value is ever altered or dropped silently; its representation (whitespace, key order,
    /// `1e2` as `100.0`) is normalised.
    pub(crate) fn parse(
        bytes: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<Payload, stowage_core::exact_json::Inexact> {
        if content_type.is_some_and(is_json_content_type) {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                stowage_core::exact_json::check(&bytes)?;
                return Ok(Payload::Json(value));
            }
        }
        Ok(Payload::Bytes(bytes))
    }

    /// The bytes `get` returns: compact JSON with keys in byte order, or the bytes themselves;
    /// `None` for a payload in a file (read it from there).
    pub(crate) fn render(&self) -> Option<Vec<u8>> {
        match self {
            Payload::Json(v) => Some(serde_json::to_vec(v).unwrap_or_default()),
            Payload::Bytes(b) => Some(b.clone()),
            Payload::Blob(_) => None,
        }
    }
}

/// The record as it is at one point of the document's history.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RecordState {
    /// The payload (absent only before the first put).
    pub(crate) payload: Option<Payload>,
    /// Content type, tags and attributes.
    pub(crate) metadata: Metadata,
    /// When the record was deleted, if this state is a tombstone.
    pub(crate) deleted_at: Option<Timestamp>,
}

/// The actor of a document's genesis change: derived from the record's name, so every replica
/// and process makes the byte-identical genesis change and they deduplicate on merge.
pub(crate) fn genesis_actor(ns: &Namespace, key: &Key) -> ActorId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"stowage-automerge-genesis\0");
    hasher.update(ns.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(key.as_str().as_bytes());
    ActorId::from(&hasher.finalize().as_bytes()[..16])
}

/// Adds the genesis change (time 0, no message): `ns`, `key` and the empty `body`, `tags` and
/// `attributes` maps. Creating these containers in one shared change is what lets two replicas
/// that both create a record merge their fields instead of one container hiding the other.
pub(crate) fn add_genesis(
    doc: &mut Automerge,
    ns: &Namespace,
    key: &Key,
) -> Result<(), automerge::AutomergeError> {
    let own_actor = doc.get_actor().clone();
    doc.set_actor(genesis_actor(ns, key));
    let result = doc.transact_with(
        |_| automerge::transaction::CommitOptions::default().with_time(0),
        |tx| {
            tx.put(ROOT, "ns", ns.as_str())?;
            tx.put(ROOT, "key", key.as_str())?;
            tx.put_object(ROOT, "body", ObjType::Map)?;
            tx.put_object(ROOT, "tags", ObjType::Map)?;
            tx.put_object(ROOT, "attributes", ObjType::Map)?;
            Ok::<_, automerge::AutomergeError>(())
        },
    );
    doc.set_actor(own_actor);
    result.map(|_| ()).map_err(|failure| failure.error)
}

/// Writes `state` into the document through `tx` (a transaction at the current heads, or
/// isolated at a base version's heads), producing operations only for what differs from what
/// `tx` sees.
pub(crate) fn reconcile_record<T: Transactable + ReadDoc>(
    tx: &mut T,
    payload: Option<&Payload>,
    metadata: &Metadata,
    deleted_at: Option<Timestamp>,
) -> Result<(), automerge::AutomergeError> {
    if let Some(payload) = payload {
        match payload {
            Payload::Json(value) => reconcile_value(tx, &ROOT, "body".into(), value)?,
            Payload::Bytes(bytes) => {
                let same = matches!(tx.get(ROOT, "body")?, Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Bytes(b) if b == bytes));
                if !same {
                    tx.put(ROOT, "body", ScalarValue::Bytes(bytes.clone()))?;
                }
            }
            Payload::Blob(blob) => {
                let same = matches!(tx.get(ROOT, "body")?, Some((Value::Scalar(s), _)) if blob_ref(s.as_ref()) == Some(*blob));
                if !same {
                    tx.put(ROOT, "body", blob_scalar(blob))?;
                }
            }
        }
    }
    match (
        &metadata.content_type,
        read_string(tx, &ROOT, "content_type")?,
    ) {
        (Some(want), Some(have)) if *want == have => {}
        (Some(want), _) => tx.put(ROOT, "content_type", want.as_str())?,
        (None, Some(_)) => tx.delete(ROOT, "content_type")?,
        (None, None) => {}
    }
    let tags = ensure_object(tx, &ROOT, "tags", ObjType::Map)?;
    let have: BTreeSet<String> = tx.keys(&tags).collect();
    for gone in have.difference(&metadata.tags) {
        tx.delete(&tags, gone.as_str())?;
    }
    for added in metadata.tags.difference(&have) {
        tx.put(&tags, added.as_str(), true)?;
    }
    let attributes = ensure_object(tx, &ROOT, "attributes", ObjType::Map)?;
    let want: serde_json::Map<String, serde_json::Value> = metadata
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    reconcile_json_map(tx, &attributes, &want)?;
    match (deleted_at, tx.get(ROOT, "deleted")?.is_some()) {
        (Some(t), _) => tx.put(
            ROOT,
            "deleted",
            ScalarValue::Timestamp(t.as_micros() / 1000),
        )?,
        (None, true) => tx.delete(ROOT, "deleted")?,
        (None, false) => {}
    }
    Ok(())
}

/// Marks the record deleted at `at`.
pub(crate) fn write_tombstone<T: Transactable>(
    tx: &mut T,
    at_ms: i64,
) -> Result<(), automerge::AutomergeError> {
    tx.put(ROOT, "deleted", ScalarValue::Timestamp(at_ms))
}

fn ensure_object<T: Transactable + ReadDoc>(
    tx: &mut T,
    parent: &ObjId,
    field: &str,
    kind: ObjType,
) -> Result<ObjId, automerge::AutomergeError> {
    match tx.get(parent, field)? {
        Some((Value::Object(k), id)) if k == kind => Ok(id),
        _ => tx.put_object(parent, field, kind),
    }
}

fn read_string<R: ReadDoc>(
    doc: &R,
    obj: &ObjId,
    field: &str,
) -> Result<Option<String>, automerge::AutomergeError> {
    Ok(match doc.get(obj, field)? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    })
}

fn reconcile_json_map<T: Transactable + ReadDoc>(
    tx: &mut T,
    obj: &ObjId,
    want: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), automerge::AutomergeError> {
    let have: Vec<String> = tx.keys(obj).collect();
    for k in have.iter().filter(|k| !want.contains_key(k.as_str())) {
        tx.delete(obj, k.as_str())?;
    }
    for (k, v) in want {
        reconcile_value(tx, obj, Prop::Map(k.clone()), v)?;
    }
    Ok(())
}

/// Makes `parent[prop]` equal `want`: recurses into a container of the same kind, replaces a
/// value of another kind, leaves an equal scalar untouched.
fn reconcile_value<T: Transactable + ReadDoc>(
    tx: &mut T,
    parent: &ObjId,
    prop: Prop,
    want: &serde_json::Value,
) -> Result<(), automerge::AutomergeError> {
    let current = tx
        .get(parent, prop.clone())?
        .map(|(v, id)| (v.into_owned(), id));
    match want {
        serde_json::Value::Object(map) => {
            let obj = match current {
                Some((Value::Object(ObjType::Map), id)) => id,
                _ => tx.put_object(parent, prop, ObjType::Map)?,
            };
            reconcile_json_map(tx, &obj, map)
        }
        serde_json::Value::Array(items) => {
            let obj = match current {
                Some((Value::Object(ObjType::List), id)) => id,
                _ => tx.put_object(parent, prop, ObjType::List)?,
            };
            reconcile_list(tx, &obj, items)
        }
        scalar => {
            let want_scalar = json_scalar(scalar);
            if let Some((Value::Scalar(have), _)) = &current {
                if scalar_to_json(have.as_ref()) == *scalar {
                    return Ok(());
                }
            }
            tx.put(parent, prop, want_scalar)
        }
    }
}

/// Diffs a list: the common prefix and suffix stay untouched, the middle is updated in place
/// pairwise (recursing into containers), then the surplus is deleted or inserted.
fn reconcile_list<T: Transactable + ReadDoc>(
    tx: &mut T,
    obj: &ObjId,
    want: &[serde_json::Value],
) -> Result<(), automerge::AutomergeError> {
    let have: Vec<serde_json::Value> = {
        let at = At::current(&*tx);
        at.list_items(obj)
            .iter()
            .map(|item| render_value(&at, &item.value, &item.id))
            .collect::<Result<_, _>>()?
    };
    let prefix = have.iter().zip(want).take_while(|(a, b)| a == b).count();
    let max_suffix = have.len().min(want.len()) - prefix;
    let suffix = have
        .iter()
        .rev()
        .zip(want.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    let old_mid = have.len() - prefix - suffix;
    let new_mid = want.len() - prefix - suffix;
    let paired = old_mid.min(new_mid);
    for (i, value) in want.iter().enumerate().skip(prefix).take(paired) {
        reconcile_value(tx, obj, Prop::Seq(i), value)?;
    }
    for _ in paired..old_mid {
        tx.delete(obj, prefix + paired)?;
    }
    for (j, value) in want[prefix + paired..prefix + new_mid].iter().enumerate() {
        insert_value(tx, obj, prefix + paired + j, value)?;
    }
    Ok(())
}

fn insert_value<T: Transactable>(
    tx: &mut T,
    list: &ObjId,
    index: usize,
    value: &serde_json::Value,
) -> Result<(), automerge::AutomergeError> {
    match value {
        serde_json::Value::Object(map) => {
            let obj = tx.insert_object(list, index, ObjType::Map)?;
            for (k, v) in map {
                put_new(tx, &obj, k, v)?;
            }
        }
        serde_json::Value::Array(items) => {
            let obj = tx.insert_object(list, index, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                insert_value(tx, &obj, i, v)?;
            }
        }
        scalar => tx.insert(list, index, json_scalar(scalar))?,
    }
    Ok(())
}

fn put_new<T: Transactable>(
    tx: &mut T,
    map: &ObjId,
    field: &str,
    value: &serde_json::Value,
) -> Result<(), automerge::AutomergeError> {
    match value {
        serde_json::Value::Object(inner) => {
            let obj = tx.put_object(map, field, ObjType::Map)?;
            for (k, v) in inner {
                put_new(tx, &obj, k, v)?;
            }
        }
        serde_json::Value::Array(items) => {
            let obj = tx.put_object(map, field, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                insert_value(tx, &obj, i, v)?;
            }
        }
        scalar => tx.put(map, field, json_scalar(scalar))?,
    }
    Ok(())
}

fn json_scalar(value: &serde_json::Value) -> ScalarValue {
    match value {
        serde_json::Value::Null => ScalarValue::Null,
        serde_json::Value::Bool(b) => ScalarValue::Boolean(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => ScalarValue::Str(s.as_str().into()),
        // Containers never reach here: callers branch on them first.
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => ScalarValue::Null,
    }
}

/// The scalar a document holds for a payload in a file.
pub(crate) fn blob_scalar(blob: &BlobRef) -> ScalarValue {
    ScalarValue::Unknown {
        type_code: BLOB_REF_TYPE_CODE,
        bytes: blob.encode(),
    }
}

/// The payload file a scalar refers to, if it is a reference.
pub(crate) fn blob_ref(s: &ScalarValue) -> Option<BlobRef> {
    match s {
        ScalarValue::Unknown { type_code, bytes } => BlobRef::decode(*type_code, bytes),
        _ => None,
    }
}

/// Every payload file any change of `doc` refers to (the winning value of a version, a
/// conflicting one or one overwritten since): what `gc` keeps and `sync` copies.
pub(crate) fn blob_refs(doc: &Automerge) -> BTreeSet<BlobRef> {
    let mut out = BTreeSet::new();
    for change in doc.get_changes(&[]) {
        for op in change.decode().operations {
            if let automerge::legacy::OpType::Put(value) = &op.action {
                out.extend(blob_ref(value));
            }
        }
    }
    out
}

/// The JSON form of a scalar. Types JSON lacks: counters and timestamps are integers, bytes
/// (written by other Automerge tools) are hex strings, a payload file reference is
/// `{"hash": "blake3:…", "size": n}` (only in conflicts), other unknown types are `null`.
fn scalar_to_json(s: &ScalarValue) -> serde_json::Value {
    if let Some(blob) = blob_ref(s) {
        return serde_json::json!({"hash": blob.hash.to_string(), "size": blob.size});
    }
    match s {
        ScalarValue::Null | ScalarValue::Unknown { .. } => serde_json::Value::Null,
        ScalarValue::Boolean(b) => (*b).into(),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => (*i).into(),
        ScalarValue::Uint(u) => (*u).into(),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        ScalarValue::Counter(c) => i64::from(c).into(),
        ScalarValue::Str(s) => serde_json::Value::String(s.to_string()),
        ScalarValue::Bytes(b) => serde_json::Value::String(hex::encode(b)),
    }
}

/// A read view of a document: its current state, or the state at some heads. Whole objects
/// are read with one range query each, so a point-in-time read resolves the heads once per
/// object rather than once per field.
pub(crate) struct At<'a, R: ReadDoc> {
    doc: &'a R,
    heads: Option<&'a [ChangeHash]>,
}

/// One entry of a map or list: its value, the id of the op that wrote it (the object id for
/// objects), and whether concurrent values exist.
struct Item {
    value: Value<'static>,
    id: ObjId,
    conflict: bool,
}

impl<'a, R: ReadDoc> At<'a, R> {
    /// The current state (inside a transaction: what the transaction sees).
    pub(crate) fn current(doc: &'a R) -> Self {
        At { doc, heads: None }
    }

    /// The state at `heads`.
    pub(crate) fn heads(doc: &'a R, heads: &'a [ChangeHash]) -> Self {
        At {
            doc,
            heads: Some(heads),
        }
    }

    fn get(
        &self,
        obj: &ObjId,
        prop: Prop,
    ) -> Result<Option<(Value<'a>, ObjId)>, automerge::AutomergeError> {
        match self.heads {
            None => self.doc.get(obj, prop),
            Some(h) => self.doc.get_at(obj, prop, h),
        }
    }

    fn get_all(
        &self,
        obj: &ObjId,
        prop: Prop,
    ) -> Result<Vec<(Value<'a>, ObjId)>, automerge::AutomergeError> {
        match self.heads {
            None => self.doc.get_all(obj, prop),
            Some(h) => self.doc.get_all_at(obj, prop, h),
        }
    }

    fn map_items(&self, obj: &ObjId) -> Vec<(String, Item)> {
        let convert = |i: automerge::iter::MapRangeItem<'_>| {
            let id = i.id();
            (
                i.key.into_owned(),
                Item {
                    value: i.value.into_value(),
                    id,
                    conflict: i.conflict,
                },
            )
        };
        match self.heads {
            None => self.doc.map_range(obj, ..).map(convert).collect(),
            Some(h) => self.doc.map_range_at(obj, .., h).map(convert).collect(),
        }
    }

    fn list_items(&self, obj: &ObjId) -> Vec<Item> {
        let convert = |i: automerge::iter::ListRangeItem<'_>| {
            let id = i.id();
            Item {
                value: i.value.into_value(),
                id,
                conflict: i.conflict,
            }
        };
        match self.heads {
            None => self.doc.list_range(obj, ..).map(convert).collect(),
            Some(h) => self.doc.list_range_at(obj, .., h).map(convert).collect(),
        }
    }

    fn text(&self, obj: &ObjId) -> Result<String, automerge::AutomergeError> {
        match self.heads {
            None => self.doc.text(obj),
            Some(h) => self.doc.text_at(obj, h),
        }
    }
}

fn render_value<R: ReadDoc>(
    at: &At<'_, R>,
    value: &Value<'_>,
    id: &ObjId,
) -> Result<serde_json::Value, automerge::AutomergeError> {
    Ok(match value {
        Value::Scalar(s) => scalar_to_json(s.as_ref()),
        Value::Object(ObjType::Map | ObjType::Table) => {
            let mut out = serde_json::Map::new();
            for (k, item) in at.map_items(id) {
                out.insert(k, render_value(at, &item.value, &item.id)?);
            }
            serde_json::Value::Object(out)
        }
        Value::Object(ObjType::List) => serde_json::Value::Array(
            at.list_items(id)
                .iter()
                .map(|item| render_value(at, &item.value, &item.id))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(ObjType::Text) => serde_json::Value::String(at.text(id)?),
    })
}

/// Reads the record as `at` sees it.
pub(crate) fn read_record<R: ReadDoc>(
    at: &At<'_, R>,
) -> Result<RecordState, automerge::AutomergeError> {
    let payload = match at.get(&ROOT, "body".into())? {
        None => None,
        Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Bytes(_)) => {
            match s.as_ref() {
                ScalarValue::Bytes(b) => Some(Payload::Bytes(b.clone())),
                _ => None,
            }
        }
        Some((Value::Scalar(s), _)) if blob_ref(s.as_ref()).is_some() => {
            blob_ref(s.as_ref()).map(Payload::Blob)
        }
        Some((value, id)) => Some(Payload::Json(render_value(at, &value, &id)?)),
    };
    let content_type = match at.get(&ROOT, "content_type".into())? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    };
    let tags = match at.get(&ROOT, "tags".into())? {
        Some((Value::Object(ObjType::Map), id)) => {
            at.map_items(&id).into_iter().map(|(k, _)| k).collect()
        }
        _ => BTreeSet::new(),
    };
    let mut attributes = BTreeMap::new();
    if let Some((Value::Object(ObjType::Map), id)) = at.get(&ROOT, "attributes".into())? {
        for (k, item) in at.map_items(&id) {
            attributes.insert(k, render_value(at, &item.value, &item.id)?);
        }
    }
    let deleted_at = match at.get(&ROOT, "deleted".into())? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Timestamp(ms) | ScalarValue::Int(ms) => {
                Some(Timestamp::from_micros(ms.saturating_mul(1000)))
            }
            _ => None,
        },
        _ => None,
    };
    Ok(RecordState {
        payload,
        metadata: Metadata {
            content_type,
            tags,
            attributes,
        },
        deleted_at,
    })
}

/// Every field (of the body and the attributes) holding concurrent values, each value rendered
/// as JSON, the winning value first. Identical concurrent values are not a conflict.
pub(crate) fn conflicts<R: ReadDoc>(
    at: &At<'_, R>,
) -> Result<Vec<Conflict>, automerge::AutomergeError> {
    let mut out = Vec::new();
    for (field, item) in at.map_items(&ROOT) {
        match field.as_str() {
            "body" => visit_conflicts(at, &ROOT, Prop::Map(field), &item, "", &mut out)?,
            "content_type" => visit_conflicts(
                at,
                &ROOT,
                Prop::Map(field),
                &item,
                "metadata/content_type",
                &mut out,
            )?,
            "attributes" => {
                if let Value::Object(ObjType::Map) = item.value {
                    for (k, attr) in at.map_items(&item.id) {
                        let path = format!("metadata/attributes/{}", escape_pointer(&k));
                        visit_conflicts(at, &item.id, Prop::Map(k), &attr, &path, &mut out)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn visit_conflicts<R: ReadDoc>(
    at: &At<'_, R>,
    obj: &ObjId,
    prop: Prop,
    item: &Item,
    path: &str,
    out: &mut Vec<Conflict>,
) -> Result<(), automerge::AutomergeError> {
    if item.conflict {
        let mut values = vec![render_value(at, &item.value, &item.id)?];
        for (v, id) in at.get_all(obj, prop)? {
            if id == item.id {
                continue;
            }
            let rendered = render_value(at, &v, &id)?;
            if !values.contains(&rendered) {
                values.push(rendered);
            }
        }
        if values.len() > 1 {
            out.push(Conflict {
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.to_string()
                },
                values,
            });
        }
    }
    match item.value {
        Value::Object(ObjType::Map | ObjType::Table) => {
            for (k, child) in at.map_items(&item.id) {
                let child_path = format!("{path}/{}", escape_pointer(&k));
                visit_conflicts(at, &item.id, Prop::Map(k), &child, &child_path, out)?;
            }
        }
        Value::Object(ObjType::List) => {
            for (i, child) in at.list_items(&item.id).iter().enumerate() {
                let child_path = format!("{path}/{i}");
                visit_conflicts(at, &item.id, Prop::Seq(i), child, &child_path, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}
