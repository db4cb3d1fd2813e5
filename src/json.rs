//! Lossless conversion between `google.protobuf.Value` (and `Struct`, `ListValue`)
//! and `serde_json::Value`.
//!
//! Protobuf numbers are doubles, so a JSON integer beyond 2^53 loses precision on
//! the way in; everything else round-trips.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number};

/// Converts a protobuf `Value` to JSON. A missing kind, or a number that is not
/// finite (JSON has no NaN or infinity), becomes `null`.
pub fn value_to_json(value: Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(list)) => list_to_json(list),
        Some(Kind::StructValue(object)) => struct_to_json(object),
    }
}

/// Converts a protobuf `Struct` to a JSON object.
pub fn struct_to_json(object: Struct) -> serde_json::Value {
    serde_json::Value::Object(
        object
            .fields
            .into_iter()
            .map(|(key, value)| (key, value_to_json(value)))
            .collect(),
    )
}

/// Converts a protobuf `ListValue` to a JSON array.
pub fn list_to_json(list: ListValue) -> serde_json::Value {
    serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect())
}

fn number_to_json(n: f64) -> serde_json::Value {
    // Whole numbers that a double holds exactly stay integers in JSON, so that
    // `{"price": 12}` does not come back as `12.0`.
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // The cast is exact: n is whole and within i64's exactly representable range.
        return serde_json::Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Converts JSON to a protobuf `Value`.
pub fn json_to_value(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(json_to_list(items)),
        serde_json::Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object to a protobuf `Struct`.
pub fn json_to_struct(object: Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

/// Converts JSON items to a protobuf `ListValue`.
pub fn json_to_list(items: Vec<serde_json::Value>) -> ListValue {
    ListValue {
        values: items.into_iter().map(json_to_value).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nested_documents() {
        let json = serde_json::json!({
            "name": "Soup of the day",
            "price": 12,
            "half": 6.5,
            "tags": ["vegan", null, true],
            "nested": {"empty": {}, "list": []}
        });
        let serde_json::Value::Object(object) = json.clone() else {
            unreachable!("literal is an object")
        };
        assert_eq!(struct_to_json(json_to_struct(object)), json);
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let value = Value {
            kind: Some(Kind::NumberValue(f64::INFINITY)),
        };
        assert_eq!(value_to_json(value), serde_json::Value::Null);
    }
}
