//! Small building blocks of the wire model: a field that remembers whether it was absent,
//! `null` or set, and a number that the API sometimes sends as a string.
//!
//! Both exist so that a body read from the API serialises back to the same JSON value: the
//! seed shows the gateway distinguishing `null` from a missing key (old-format jobs lack six
//! keys that new ones carry as `null`) and echoing `"80"` as a string while `"-12"` becomes a
//! number. Losing either distinction would make the operator rewrite fields it never manages.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON member that can be missing, `null`, or carry a value.
///
/// Use with `#[serde(default, skip_serializing_if = "Field::is_absent")]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Field<T> {
    /// The key was not in the document.
    #[default]
    Absent,
    /// The key was present with the value `null`.
    Null,
    /// The key was present with a value.
    Value(T),
}

impl<T> Field<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// True when absent or `null`.
    pub fn is_unset(&self) -> bool {
        !matches!(self, Field::Value(_))
    }

    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self) -> Option<&mut T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_ref(&self) -> Field<&T> {
        match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(v) => Field::Value(v),
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(v) => Field::Value(f(v)),
        }
    }
}

impl<T> From<Option<T>> for Field<T> {
    /// `None` becomes an explicit `null`: a body built by the client sends every key it knows.
    fn from(value: Option<T>) -> Self {
        match value {
            Some(v) => Field::Value(v),
            None => Field::Null,
        }
    }
}

impl<T> From<T> for Field<T> {
    fn from(value: T) -> Self {
        Field::Value(value)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // Absent fields are skipped by `skip_serializing_if`; if a caller forgets that
            // attribute, `null` is the closest faithful rendering.
            Field::Absent | Field::Null => serializer.serialize_none(),
            Field::Value(v) => serializer.serialize_some(v),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            Some(v) => Field::Value(v),
            None => Field::Null,
        })
    }
}

/// An integer the API accepts either as a JSON number or as a string of digits
/// (`patchTuesdayPlusXDays: "-12"`, `threshold: "100"`, `completedPercentage: "80"`).
///
/// It keeps the form it arrived in, so serialising gives back the same JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum LooseInt {
    Number(serde_json::Number),
    Text(String),
}

impl LooseInt {
    /// The integer value, if the number or string holds one (`"100"`, `100`, `100.0`).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            LooseInt::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            }),
            LooseInt::Text(s) => s.trim().parse().ok(),
        }
    }

    /// The same value as a JSON number when it is an integer (how the server stores it).
    pub fn to_number(&self) -> Option<LooseInt> {
        self.as_i64().map(LooseInt::from)
    }
}

impl From<i64> for LooseInt {
    fn from(value: i64) -> Self {
        LooseInt::Number(value.into())
    }
}

impl Serialize for LooseInt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LooseInt::Number(n) => n.serialize(serializer),
            LooseInt::Text(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for LooseInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(serde_json::Number),
            Text(String),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Number(n)) => Ok(LooseInt::Number(n)),
            Ok(Raw::Text(s)) => Ok(LooseInt::Text(s)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a number or a string holding a number",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Probe {
        #[serde(default, skip_serializing_if = "Field::is_absent")]
        a: Field<String>,
        #[serde(default, skip_serializing_if = "Field::is_absent")]
        n: Field<LooseInt>,
    }

    #[test]
    fn absent_null_and_value_round_trip() {
        for doc in [
            json!({}),
            json!({"a": null}),
            json!({"a": "x", "n": "-12"}),
            json!({"n": 7}),
        ] {
            let p: Probe = serde_json::from_value(doc.clone()).unwrap();
            assert_eq!(serde_json::to_value(&p).unwrap(), doc);
        }
    }

    #[test]
    fn loose_int_reads_both_forms() {
        let p: Probe = serde_json::from_value(json!({"n": "-12"})).unwrap();
        assert_eq!(p.n.get().and_then(LooseInt::as_i64), Some(-12));
        let p: Probe = serde_json::from_value(json!({"n": 100})).unwrap();
        assert_eq!(p.n.get().and_then(LooseInt::as_i64), Some(100));
        let p: Probe = serde_json::from_value(json!({"n": "abc"})).unwrap();
        assert_eq!(p.n.get().and_then(LooseInt::as_i64), None);
        assert!(serde_json::from_value::<Probe>(json!({"n": true})).is_err());
    }
}
