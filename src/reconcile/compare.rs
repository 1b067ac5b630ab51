//! The live side of a diff without a live JSON tree: the typed live job is serialised through a
//! serializer that walks the normalised desired value alongside it and only answers, member by
//! member, "would `diff` find nothing here?". Members it is not sure about (a difference, a shape
//! it does not handle) are normalised and diffed the ordinary way, so the result is exactly
//! `diff(desired, &normalise_live_managed(live, recorded, desired))` — only cheaper when the job
//! has not changed, which is what almost every reconcile sees.
//!
//! The answer "nothing differs" must never be wrong; "not sure" is always allowed. Each value
//! rule of [`normalise`](super::normalise) appears here as the same rule applied to one scalar.

use super::diff::{FieldDiff, diff, diff_member};
use super::digest::ScriptKey;
// "Not sure": the caller falls back to the ordinary path.
use super::normalise::{
    Class, UNKNOWN_SCRIPT_PREFIX, classify, content_token, linked_rules, normalise_live_keys,
    normalise_value, on_complete_default,
};
use super::normalise::{Unsupported, unsupported_rest};
use crate::qualys::{JobBody, ScriptKind, is_script_path, schedule};
use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::{Number, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// The differences between a normalised desired body and a typed live job, identical (paths,
/// order, values) to `diff(desired, &normalise_live_managed(live, recorded, desired))`.
pub fn diff_live(
    desired: &Value,
    live: &JobBody,
    recorded: &BTreeMap<String, String>,
) -> Vec<FieldDiff> {
    Compact::of(desired).diff(live, recorded)
}

/// A normalised desired body in the form the comparison reads: a fraction of the memory of a
/// `serde_json::Value` (no hash index per object, one allocation per list or object), for the
/// engine to keep one per resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Compact(Node);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(Box<str>),
    Array(Box<[Node]>),
    Object(Box<Object>),
}

/// Members in their order, and their positions sorted by key for lookups.
#[derive(Clone, Debug, PartialEq)]
struct Object {
    members: Box<[(Arc<str>, Node)]>,
    by_key: Box<[u32]>,
}

impl Node {
    fn of(v: &Value) -> Node {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(s.as_str().into()),
            Value::Array(items) => Node::Array(items.iter().map(Node::of).collect()),
            Value::Object(o) => {
                let members: Box<[(Arc<str>, Node)]> =
                    o.iter().map(|(k, v)| (intern(k), Node::of(v))).collect();
                let mut by_key: Vec<u32> = (0..members.len())
                    .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                    .collect();
                by_key.sort_by(|a, b| members[*a as usize].0.cmp(&members[*b as usize].0));
                Node::Object(Box::new(Object {
                    members,
                    by_key: by_key.into(),
                }))
            }
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.to_string()),
            Node::Array(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Object(o) => Value::Object(
                o.members
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }

    fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }

    /// Equal to a scalar JSON value (as `serde_json::to_value` would build it).
    fn eq_scalar(&self, v: &Value) -> bool {
        match (self, v) {
            (Node::Null, Value::Null) => true,
            (Node::Bool(a), Value::Bool(b)) => a == b,
            (Node::Number(a), Value::Number(b)) => a == b,
            _ => false,
        }
    }
}

/// Member names shared by every kept body: they are the wire model's names, a few dozen in all.
fn intern(name: &str) -> Arc<str> {
    /// Beyond this many, names are not shared (a bound, never reached by the wire model).
    const MAX: usize = 1024;
    static NAMES: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = names.get(name) {
        return shared.clone();
    }
    let shared: Arc<str> = name.into();
    if names.len() < MAX {
        names.insert(shared.clone());
    }
    shared
}

impl Object {
    fn get(&self, key: &str) -> Option<&Node> {
        let at = self
            .by_key
            .binary_search_by(|i| (*self.members[*i as usize].0).cmp(key))
            .ok()?;
        Some(&self.members[self.by_key[at] as usize].1)
    }
}

impl Compact {
    pub fn of(v: &Value) -> Self {
        Compact(Node::of(v))
    }

    /// The value it was made from.
    pub fn to_value(&self) -> Value {
        self.0.to_value()
    }

    /// One member, as a JSON value (None when absent or not an object).
    pub fn member(&self, key: &str) -> Option<Value> {
        match &self.0 {
            Node::Object(o) => o.get(key).map(Node::to_value),
            _ => None,
        }
    }

    /// See [`diff_live`].
    pub fn diff(&self, live: &JobBody, recorded: &BTreeMap<String, String>) -> Vec<FieldDiff> {
        let Node::Object(d) = &self.0 else {
            return diff(
                &self.to_value(),
                &super::normalise::normalise_live(live, recorded),
            );
        };
        let ctx = Ctx { recorded, live };
        let failed = match live.serialize(Top { d, ctx: &ctx }) {
            Ok(failed) => failed,
            // A shape the walk does not follow: the ordinary path over every managed member.
            Err(Unsupported) => d.members.iter().map(|(k, _)| &**k).collect(),
        };
        if failed.is_empty() {
            return Vec::new();
        }
        let keep = |k: &str| failed.contains(&k);
        let exact = normalise_live_keys(live, recorded, &keep);
        let mut out = Vec::new();
        for (k, dv) in d.members.iter() {
            if keep(k) {
                let lv = exact.get(&**k).unwrap_or(&Value::Null);
                diff_member(k, &dv.to_value(), lv, &mut out);
            }
        }
        out
    }
}

/// What the walk reads besides the two bodies.
struct Ctx<'r> {
    recorded: &'r BTreeMap<String, String>,
    /// For `chainedJobRule`, which the live job reports under `linkedToJob`.
    live: &'r JobBody,
}

/// Where a value sits, for the script rule (it applies to the `script` and `detectionScript`
/// members of the items of the two top-level action lists only).
#[derive(Clone, Copy)]
enum Slot {
    Plain,
    Actions(&'static str),
    Action(&'static str, usize),
    Script(ScriptKey),
}

impl Slot {
    fn for_top(key: &str) -> Slot {
        match key {
            "preDeployActions" => Slot::Actions("preDeployActions"),
            "postDeployActions" => Slot::Actions("postDeployActions"),
            _ => Slot::Plain,
        }
    }

    fn item(self, i: usize) -> Slot {
        match self {
            Slot::Actions(list) => Slot::Action(list, i),
            _ => Slot::Plain,
        }
    }

    fn member(self, key: &str) -> Slot {
        match (self, key) {
            (Slot::Action(list, i), "script") => {
                Slot::Script(ScriptKey::for_list(list, i, ScriptKind::Script))
            }
            (Slot::Action(list, i), "detectionScript") => {
                Slot::Script(ScriptKey::for_list(list, i, ScriptKind::DetectionScript))
            }
            _ => Slot::Plain,
        }
    }
}

/// The merge of a live map's keys with a desired object's keys. Both come in the wire model's
/// declaration order, so a key is usually the next desired one or not managed at all.
struct Keys<'a> {
    d: &'a Object,
    next: usize,
    /// Desired members the live map lacks (passed over by the merge).
    missing: Vec<(&'a str, &'a Node)>,
}

enum Found<'a> {
    Managed(&'a str, &'a Node),
    Unmanaged,
}

impl<'a> Keys<'a> {
    fn new(d: &'a Object) -> Self {
        Keys {
            d,
            next: 0,
            missing: Vec::new(),
        }
    }

    fn find(&mut self, key: &str) -> Result<Found<'a>, Unsupported> {
        let members = &self.d.members;
        if let Some((k, v)) = members.get(self.next)
            && **k == *key
        {
            self.next += 1;
            return Ok(Found::Managed(k, v));
        }
        if self.d.get(key).is_none() {
            return Ok(Found::Unmanaged);
        }
        // Further on: the members passed over are missing from the live map. Behind (a
        // duplicate, another order): not followed here.
        let rest = members.get(self.next..).ok_or(Unsupported)?;
        let ahead = rest
            .iter()
            .position(|(k, _)| **k == *key)
            .ok_or(Unsupported)?;
        self.missing
            .extend(rest[..ahead].iter().map(|(k, v)| (&**k, v)));
        let (k, v) = &rest[ahead];
        self.next += ahead + 1;
        Ok(Found::Managed(k, v))
    }

    /// Every desired member the live map did not have.
    fn rest(mut self) -> Vec<(&'a str, &'a Node)> {
        let rest = self.d.members.get(self.next..).unwrap_or_default();
        self.missing.extend(rest.iter().map(|(k, v)| (&**k, v)));
        self.missing
    }
}

/// Reads a map key as the merge's answer (keys are strings in the wire model).
struct KeyProbe<'k, 'a> {
    keys: &'k mut Keys<'a>,
}

/// The top level: which managed members may differ (to be diffed the ordinary way).
struct Top<'a, 'c> {
    d: &'a Object,
    ctx: &'c Ctx<'c>,
}

struct TopMembers<'a, 'c> {
    keys: Keys<'a>,
    ctx: &'c Ctx<'c>,
    pending: Option<(&'a str, &'a Node)>,
    failed: Vec<&'a str>,
}

impl<'a, 'c> ser::SerializeMap for TopMembers<'a, 'c> {
    type Ok = Vec<&'a str>;
    type Error = Unsupported;

    fn serialize_key<K: ?Sized + Serialize>(&mut self, key: &K) -> Result<(), Unsupported> {
        self.pending = match key.serialize(KeyProbe {
            keys: &mut self.keys,
        })? {
            Found::Managed(k, v) => Some((k, v)),
            Found::Unmanaged => None,
        };
        Ok(())
    }

    fn serialize_value<V: ?Sized + Serialize>(&mut self, value: &V) -> Result<(), Unsupported> {
        let Some((k, dv)) = self.pending.take() else {
            return Ok(());
        };
        let same = value
            .serialize(Same {
                d: dv,
                class: classify(k),
                parent: Class::Other,
                key: Some(k),
                slot: Slot::for_top(k),
                strict: false,
                lift: k == "chainedJobRule",
                ctx: self.ctx,
            })
            .unwrap_or(false);
        if !same {
            self.failed.push(k);
        }
        Ok(())
    }

    fn end(self) -> Result<Vec<&'a str>, Unsupported> {
        let mut failed = self.failed;
        let live = self.ctx.live;
        failed.extend(
            self.keys
                .rest()
                .into_iter()
                .filter(|(k, d)| !(*k == "chainedJobRule" && lifted_matches(d, live)))
                .map(|(k, _)| k),
        );
        Ok(failed)
    }
}

/// Whether one live value, normalised under its key, leaves `diff` nothing to report against
/// the desired value `d`. `Ok(false)` and `Err` both mean "maybe not".
struct Same<'a, 'c> {
    d: &'a Node,
    class: Class,
    /// The class of the object holding this member (`onComplete` fills defaults for nulls).
    parent: Class,
    key: Option<&'a str>,
    slot: Slot,
    /// Inside a list compared as a whole: equality, no "unmanaged members" in objects.
    strict: bool,
    /// The top-level `chainedJobRule`: null means "read it from `linkedToJob`".
    lift: bool,
    ctx: &'c Ctx<'c>,
}

impl Same<'_, '_> {
    /// A null (or missing) member, normalised as `normalise` would.
    fn null(&self) -> bool {
        if self.lift {
            return lifted_matches(self.d, self.ctx.live);
        }
        null_matches(self.d, self.parent, self.key, true)
    }

    fn string(&self, s: &str) -> bool {
        let d = self.d;
        if let Slot::Script(key) = self.slot {
            return script_matches(d, key, s, self.ctx.recorded);
        }
        match self.class {
            Class::Numeric | Class::NumericOrEmpty => {
                let t = s.trim();
                if let Ok(n) = t.parse::<i64>() {
                    *d == Node::Number(Number::from(n))
                } else if t.is_empty() {
                    d.is_null()
                } else {
                    d.as_str() == Some(s)
                }
            }
            Class::EmptyMeansNull if s.is_empty() => d.is_null(),
            Class::StartDateTime => match schedule::canonical_start(s) {
                Some(c) => d.as_str() == Some(c.as_str()),
                None => d.as_str() == Some(s),
            },
            _ => d.as_str() == Some(s),
        }
    }
}

/// Whether a null member (`present`) or a missing one leaves `diff` nothing to report. The
/// value rules see a null member, but a missing one only when `onComplete` fills it in.
fn null_matches(d: &Node, parent: Class, key: Option<&str>, present: bool) -> bool {
    let mut v = Value::Null;
    if parent == Class::OnComplete
        && let Some(default) = key.and_then(on_complete_default)
    {
        v = default;
    } else if present {
        normalise_value(&mut v, key);
    }
    diff_empty(d, &v)
}

/// The chained rule as the ordinary path lifts it from `linkedToJob`, against `d`.
fn lifted_matches(d: &Node, live: &JobBody) -> bool {
    let mut v = Value::Array(linked_rules(live));
    normalise_value(&mut v, Some("chainedJobRule"));
    diff_empty(d, &v)
}

/// Whether `diff` of `d` against an already normalised `live` reports nothing (its rules:
/// desired members only, lists of objects by position, anything else by equality).
fn diff_empty(d: &Node, live: &Value) -> bool {
    match d {
        Node::Object(o) => {
            let l = live.as_object();
            o.members
                .iter()
                .all(|(k, dv)| diff_empty(dv, l.and_then(|l| l.get(&**k)).unwrap_or(&Value::Null)))
        }
        Node::Array(items)
            if items.iter().any(Node::is_object)
                || live
                    .as_array()
                    .is_some_and(|l| l.iter().any(Value::is_object)) =>
        {
            let l = live.as_array().map(Vec::as_slice).unwrap_or_default();
            items.len() == l.len() && items.iter().zip(l).all(|(d, l)| diff_empty(d, l))
        }
        _ => equal(d, live),
    }
}

/// JSON equality of a node and a value (objects as maps, whatever their order).
fn equal(d: &Node, v: &Value) -> bool {
    match (d, v) {
        (Node::String(a), Value::String(b)) => **a == **b,
        (Node::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b))
        }
        (Node::Object(a), Value::Object(b)) => {
            a.members.len() == b.len()
                && a.members
                    .iter()
                    .all(|(k, a)| b.get(&**k).is_some_and(|b| equal(a, b)))
        }
        _ => d.eq_scalar(v),
    }
}

fn script_matches(d: &Node, key: ScriptKey, s: &str, recorded: &BTreeMap<String, String>) -> bool {
    if s.is_empty() {
        return d.as_str() == Some("");
    }
    if is_script_path(s) {
        return match recorded.get(&key.to_string()) {
            Some(digest) => d.as_str() == Some(digest.as_str()),
            None => {
                d.as_str()
                    .and_then(|t| t.strip_prefix(UNKNOWN_SCRIPT_PREFIX))
                    == Some(s)
            }
        };
    }
    d.as_str() == content_token(s).as_str()
}

macro_rules! scalar {
    ($($name:ident($t:ty) => $conv:expr),* $(,)?) => {
        $(fn $name(self, v: $t) -> Result<bool, Unsupported> {
            let v: Value = $conv(v);
            Ok(self.d.eq_scalar(&v))
        })*
    };
}

impl<'a, 'c> ser::Serializer for Same<'a, 'c> {
    type Ok = bool;
    type Error = Unsupported;
    type SerializeSeq = SeqSame<'a, 'c>;
    type SerializeTuple = Impossible<bool, Unsupported>;
    type SerializeTupleStruct = Impossible<bool, Unsupported>;
    type SerializeTupleVariant = Impossible<bool, Unsupported>;
    type SerializeMap = MapSame<'a, 'c>;
    type SerializeStruct = Impossible<bool, Unsupported>;
    type SerializeStructVariant = Impossible<bool, Unsupported>;

    scalar!(
        serialize_bool(bool) => Value::Bool,
        serialize_i8(i8) => |v| Value::from(i64::from(v)),
        serialize_i16(i16) => |v| Value::from(i64::from(v)),
        serialize_i32(i32) => |v| Value::from(i64::from(v)),
        serialize_i64(i64) => Value::from,
        serialize_u8(u8) => |v| Value::from(u64::from(v)),
        serialize_u16(u16) => |v| Value::from(u64::from(v)),
        serialize_u32(u32) => |v| Value::from(u64::from(v)),
        serialize_u64(u64) => Value::from,
        serialize_f32(f32) => Value::from,
        serialize_f64(f64) => Value::from,
    );

    fn serialize_char(self, v: char) -> Result<bool, Unsupported> {
        Ok(self.string(v.encode_utf8(&mut [0; 4])))
    }

    fn serialize_str(self, v: &str) -> Result<bool, Unsupported> {
        Ok(self.string(v))
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<bool, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_none(self) -> Result<bool, Unsupported> {
        Ok(self.null())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<bool, Unsupported> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<bool, Unsupported> {
        Ok(self.null())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<bool, Unsupported> {
        Ok(self.null())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<bool, Unsupported> {
        Ok(self.string(variant))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<bool, Unsupported> {
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<SeqSame<'a, 'c>, Unsupported> {
        let Node::Array(d) = self.d else {
            return Err(Unsupported);
        };
        let mode = if self.strict || !d.iter().any(Node::is_object) {
            if self.class == Class::IdSet && !self.strict {
                // Sorted and deduplicated by `normalise`: a set of strings.
                if d.len() > 64 || !d.iter().all(|v| v.as_str().is_some()) {
                    return Err(Unsupported);
                }
                Mode::Set(0)
            } else {
                Mode::Whole
            }
        } else {
            Mode::Positional
        };
        Ok(SeqSame {
            d,
            mode,
            slot: self.slot,
            i: 0,
            same: true,
            ctx: self.ctx,
        })
    }

    fn serialize_map(self, _: Option<usize>) -> Result<MapSame<'a, 'c>, Unsupported> {
        if self.strict {
            return Err(Unsupported);
        }
        let Node::Object(d) = self.d else {
            return Err(Unsupported);
        };
        Ok(MapSame {
            keys: Keys::new(d),
            class: self.class,
            slot: self.slot,
            pending: None,
            same: true,
            ctx: self.ctx,
        })
    }

    unsupported_rest!(compound bool);
}

/// How a desired list is compared (as `diff` does): lists holding objects item by item, other
/// lists as a whole; id sets were sorted and deduplicated on both sides.
enum Mode {
    Positional,
    Whole,
    /// The desired items seen so far, as a bit set.
    Set(u64),
}

struct SeqSame<'a, 'c> {
    d: &'a [Node],
    mode: Mode,
    slot: Slot,
    i: usize,
    same: bool,
    ctx: &'c Ctx<'c>,
}

impl ser::SerializeSeq for SeqSame<'_, '_> {
    type Ok = bool;
    type Error = Unsupported;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !self.same {
            return Ok(());
        }
        let i = self.i;
        self.i += 1;
        self.same = match &mut self.mode {
            Mode::Set(seen) => match value.serialize(SetProbe { d: self.d }) {
                Ok(at) => {
                    *seen |= 1 << at;
                    true
                }
                Err(_) => false,
            },
            mode => match self.d.get(i) {
                None => false,
                Some(d) => value
                    .serialize(Same {
                        d,
                        class: Class::Other,
                        parent: Class::Other,
                        key: None,
                        slot: self.slot.item(i),
                        strict: matches!(mode, Mode::Whole),
                        lift: false,
                        ctx: self.ctx,
                    })
                    .unwrap_or(false),
            },
        };
        Ok(())
    }

    fn end(self) -> Result<bool, Unsupported> {
        Ok(self.same
            && match self.mode {
                Mode::Set(seen) => seen.count_ones() as usize == self.d.len(),
                _ => self.i == self.d.len(),
            })
    }
}

/// The position of a live id in a desired id set, or `Err` when it is not there.
struct SetProbe<'a> {
    d: &'a [Node],
}

impl ser::Serializer for SetProbe<'_> {
    type Ok = usize;
    type Error = Unsupported;
    type SerializeSeq = Impossible<usize, Unsupported>;
    type SerializeTuple = Impossible<usize, Unsupported>;
    type SerializeTupleStruct = Impossible<usize, Unsupported>;
    type SerializeTupleVariant = Impossible<usize, Unsupported>;
    type SerializeMap = Impossible<usize, Unsupported>;
    type SerializeStruct = Impossible<usize, Unsupported>;
    type SerializeStructVariant = Impossible<usize, Unsupported>;

    fn serialize_str(self, v: &str) -> Result<usize, Unsupported> {
        self.d
            .binary_search_by(|x| x.as_str().unwrap_or_default().cmp(v))
            .map_err(|_| Unsupported)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<usize, Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<usize, Unsupported> {
        value.serialize(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }

    unsupported_rest!(usize);
}

struct MapSame<'a, 'c> {
    keys: Keys<'a>,
    class: Class,
    slot: Slot,
    pending: Option<(&'a str, &'a Node)>,
    same: bool,
    ctx: &'c Ctx<'c>,
}

impl ser::SerializeMap for MapSame<'_, '_> {
    type Ok = bool;
    type Error = Unsupported;

    fn serialize_key<K: ?Sized + Serialize>(&mut self, key: &K) -> Result<(), Unsupported> {
        if !self.same {
            return Ok(());
        }
        self.pending = match key.serialize(KeyProbe {
            keys: &mut self.keys,
        }) {
            Ok(Found::Managed(k, v)) => Some((k, v)),
            Ok(Found::Unmanaged) => None,
            Err(_) => {
                self.same = false;
                None
            }
        };
        Ok(())
    }

    fn serialize_value<V: ?Sized + Serialize>(&mut self, value: &V) -> Result<(), Unsupported> {
        let Some((k, d)) = self.pending.take() else {
            return Ok(());
        };
        self.same = value
            .serialize(Same {
                d,
                class: classify(k),
                parent: self.class,
                key: Some(k),
                slot: self.slot.member(k),
                strict: false,
                lift: false,
                ctx: self.ctx,
            })
            .unwrap_or(false);
        Ok(())
    }

    fn end(self) -> Result<bool, Unsupported> {
        let parent = self.class;
        Ok(self.same
            && self
                .keys
                .rest()
                .into_iter()
                .all(|(k, d)| null_matches(d, parent, Some(k), false)))
    }
}

impl<'k, 'a> ser::Serializer for KeyProbe<'k, 'a> {
    type Ok = Found<'a>;
    type Error = Unsupported;
    type SerializeSeq = Impossible<Found<'a>, Unsupported>;
    type SerializeTuple = Impossible<Found<'a>, Unsupported>;
    type SerializeTupleStruct = Impossible<Found<'a>, Unsupported>;
    type SerializeTupleVariant = Impossible<Found<'a>, Unsupported>;
    type SerializeMap = Impossible<Found<'a>, Unsupported>;
    type SerializeStruct = Impossible<Found<'a>, Unsupported>;
    type SerializeStructVariant = Impossible<Found<'a>, Unsupported>;

    fn serialize_str(self, v: &str) -> Result<Found<'a>, Unsupported> {
        self.keys.find(v)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<Found<'a>, Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Found<'a>, Unsupported> {
        value.serialize(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }

    unsupported_rest!(Found<'a>);
}

impl<'a, 'c> ser::Serializer for Top<'a, 'c> {
    type Ok = Vec<&'a str>;
    type Error = Unsupported;
    type SerializeSeq = Impossible<Vec<&'a str>, Unsupported>;
    type SerializeTuple = Impossible<Vec<&'a str>, Unsupported>;
    type SerializeTupleStruct = Impossible<Vec<&'a str>, Unsupported>;
    type SerializeTupleVariant = Impossible<Vec<&'a str>, Unsupported>;
    type SerializeMap = TopMembers<'a, 'c>;
    type SerializeStruct = Impossible<Vec<&'a str>, Unsupported>;
    type SerializeStructVariant = Impossible<Vec<&'a str>, Unsupported>;

    fn serialize_map(self, _: Option<usize>) -> Result<TopMembers<'a, 'c>, Unsupported> {
        Ok(TopMembers {
            keys: Keys::new(self.d),
            ctx: self.ctx,
            pending: None,
            failed: Vec::new(),
        })
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<Vec<&'a str>, Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Vec<&'a str>, Unsupported> {
        value.serialize(self)
    }

    fn serialize_str(self, _: &str) -> Result<Vec<&'a str>, Unsupported> {
        Err(Unsupported)
    }

    unsupported_rest!(Vec<&'a str>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::import::spec_from_live;
    use crate::reconcile::normalise::{normalise_desired, normalise_live_managed};
    use crate::reconcile::render::{RenderInputs, render};
    use serde_json::json;

    use crate::seed_fixtures::FILES as SEEDS;

    fn seed(name: &str) -> Value {
        serde_json::from_slice(&crate::seed_fixtures::bytes(name)).unwrap()
    }

    /// Desired bodies to compare against: each seed as a spec, its scripts as storage paths
    /// (as imported) and, for the requests, as managed content; with and without the digests
    /// recorded at the last write.
    fn desired_cases() -> Vec<(String, Value, BTreeMap<String, String>)> {
        let mut out = Vec::new();
        for name in SEEDS {
            let body = JobBody::from_json(&serde_json::to_vec(&seed(name)).unwrap()).unwrap();
            let (mut spec, _) = spec_from_live(&body).unwrap();
            let mut specs = vec![spec.clone()];
            for (list, actions) in [
                (&body.pre_deploy_actions, spec.pre_deploy_actions.as_mut()),
                (&body.post_deploy_actions, spec.post_deploy_actions.as_mut()),
            ] {
                let (Some(sent), Some(actions)) = (list.get(), actions) else {
                    continue;
                };
                for (a, s) in actions.iter_mut().zip(sent) {
                    a.script = s
                        .script
                        .get()
                        .filter(|v| !v.is_empty() && !v.contains('/'))
                        .cloned();
                }
            }
            specs.push(spec);
            for spec in specs {
                let Ok(rendered) = render(&spec, &RenderInputs::default()) else {
                    continue;
                };
                let desired = normalise_desired(&rendered);
                out.push((name.to_string(), desired.clone(), BTreeMap::new()));
                out.push((name.to_string(), desired, rendered.scripts.clone()));
            }
        }
        out
    }

    /// Every variation of `v` that changes one node: nulled, removed, emptied, retyped, lists
    /// reordered, shortened or with a duplicate.
    fn mutations(v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        let mut paths = Vec::new();
        collect_paths(v, &mut Vec::new(), &mut paths);
        let replacements = [
            Value::Null,
            json!(""),
            json!(" 7 "),
            json!(7),
            json!("7"),
            json!(-12),
            json!("x"),
            json!([]),
            json!({}),
            json!(true),
            json!(["b", "a", "a"]),
            json!("2025-7-01 09:57:18 AM"),
            json!(
                "00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000001/Script"
            ),
            json!("bHM="),
        ];
        for path in &paths {
            for r in &replacements {
                let mut m = v.clone();
                *node(&mut m, path) = r.clone();
                out.push(m);
            }
            let mut m = v.clone();
            if let Some((last, parent)) = path.split_last()
                && let Some(o) = node(&mut m, parent).as_object_mut()
                && let Step::Key(k) = last
            {
                o.shift_remove(k);
                out.push(m);
            }
            let mut m = v.clone();
            if let Some(items) = node(&mut m, path).as_array().cloned()
                && !items.is_empty()
            {
                let mut r = items.clone();
                r.reverse();
                let mut dup = items.clone();
                dup.push(items[0].clone());
                let mut short = items;
                short.pop();
                for variant in [r, dup, short] {
                    *node(&mut m, path) = Value::Array(variant);
                    out.push(m.clone());
                }
            }
        }
        out
    }

    #[derive(Clone)]
    enum Step {
        Key(String),
        Index(usize),
    }

    fn collect_paths(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        out.push(at.clone());
        match v {
            Value::Object(o) => {
                for (k, c) in o {
                    at.push(Step::Key(k.clone()));
                    collect_paths(c, at, out);
                    at.pop();
                }
            }
            Value::Array(items) => {
                for (i, c) in items.iter().enumerate() {
                    at.push(Step::Index(i));
                    collect_paths(c, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    fn node<'v>(v: &'v mut Value, path: &[Step]) -> &'v mut Value {
        path.iter().fold(v, |v, step| match step {
            Step::Key(k) => &mut v[k.as_str()],
            Step::Index(i) => &mut v[*i],
        })
    }

    fn old(desired: &Value, live: &JobBody, recorded: &BTreeMap<String, String>) -> Vec<FieldDiff> {
        diff(desired, &normalise_live_managed(live, recorded, desired))
    }

    #[test]
    fn converged_seeds_compare_without_the_ordinary_path() {
        // The seed's requests against their responses: nothing differs, and the walk decides
        // that without falling back for any member (the reason it is cheaper).
        for (request, response) in [(0, 1), (2, 3), (4, 5)] {
            let live =
                JobBody::from_json(&serde_json::to_vec(&seed(SEEDS[response])).unwrap()).unwrap();
            for (name, desired, recorded) in desired_cases() {
                if name != SEEDS[request] || recorded.is_empty() && name.starts_with("01") {
                    continue;
                }
                let compact = Compact::of(&desired);
                let Node::Object(d) = &compact.0 else {
                    panic!("an object");
                };
                let failed = live
                    .serialize(Top {
                        d,
                        ctx: &Ctx {
                            recorded: &recorded,
                            live: &live,
                        },
                    })
                    .unwrap();
                assert_eq!(compact.to_value(), desired);
                assert_eq!(
                    old(&desired, &live, &recorded),
                    diff_live(&desired, &live, &recorded)
                );
                let expected: Vec<&str> = vec![];
                if old(&desired, &live, &recorded).is_empty() {
                    assert_eq!(failed, expected, "{name}");
                }
            }
        }
    }

    #[test]
    fn the_walk_equals_the_ordinary_diff_for_every_mutation() {
        let desired = desired_cases();
        let mut compared = 0;
        let mut differing = 0;
        for name in SEEDS {
            let base = seed(name);
            for m in std::iter::once(base.clone()).chain(mutations(&base)) {
                let Ok(live) = JobBody::from_json(&serde_json::to_vec(&m).unwrap()) else {
                    continue;
                };
                for (d_name, d, recorded) in &desired {
                    if d_name[..2] != name[..2] {
                        continue;
                    }
                    let expected = old(d, &live, recorded);
                    let got = diff_live(d, &live, recorded);
                    assert_eq!(got, expected, "live {name} mutated: {m}\ndesired {d_name}");
                    compared += 1;
                    differing += usize::from(!expected.is_empty());
                }
            }
        }
        // The mutations do change things: most comparisons find a difference.
        assert!(compared > 10_000, "{compared}");
        assert!(differing > compared / 2, "{differing} of {compared}");
    }

    #[test]
    fn a_desired_value_that_is_not_an_object_uses_the_whole_live_body() {
        let live = JobBody::from_json(&serde_json::to_vec(&seed(SEEDS[1])).unwrap()).unwrap();
        let recorded = BTreeMap::new();
        assert_eq!(
            diff_live(&json!("x"), &live, &recorded),
            old(&json!("x"), &live, &recorded)
        );
    }
}
