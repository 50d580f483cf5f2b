//! Contacts sent as JSON (an array of objects) become CSV text, so that they
//! are read by the one reader with the one set of rules: the same phone
//! checks, templates and rejections as a file.

use serde_json::Value;

/// The CSV for a JSON array of contact objects: one column per key (an
/// object's keys in name order, new ones appended as later objects bring them); one record per object, in order (record `i` is
/// object `i`). Strings are taken as they are, numbers and booleans as their
/// JSON text, `null` and a missing key as an empty cell. An error names the
/// first object or value that is not a contact.
pub fn csv_from_json(contacts: &Value) -> Result<Vec<u8>, String> {
    let Some(list) = contacts.as_array() else {
        return Err("the body must be a JSON array of contact objects".into());
    };
    let mut columns: Vec<String> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let Some(object) = item.as_object() else {
            return Err(format!("contacts[{i}] is not an object"));
        };
        for (key, value) in object {
            if matches!(value, Value::Array(_) | Value::Object(_)) {
                return Err(format!("contacts[{i}].{key} must be a string, number, boolean or null"));
            }
            if !columns.iter().any(|c| c == key) {
                columns.push(key.clone());
            }
        }
    }
    if columns.is_empty() {
        return Err("no contacts: the array is empty or its objects have no keys".into());
    }
    let mut csv = Vec::new();
    write_record(&mut csv, columns.iter().map(String::as_str));
    for item in list {
        let object = item.as_object().expect("checked above");
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match object.get(c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            })
            .collect();
        write_record(&mut csv, cells.iter().map(String::as_str));
    }
    Ok(csv)
}

/// One record, every field quoted (a quote doubled), so commas, quotes and
/// line breaks inside values survive.
fn write_record<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_records_with_the_union_of_their_keys() {
        let csv = csv_from_json(&json!([
            {"phone": "+12015550100", "name": "Ada, \"the\" first"},
            {"phone": "+12015550101", "order": 42, "vip": true, "name": null}
        ]))
        .unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "\"name\",\"phone\",\"order\",\"vip\"\n\"Ada, \"\"the\"\" first\",\"+12015550100\",\"\",\"\"\n\"\",\"+12015550101\",\"42\",\"true\"\n"
        );
    }

    #[test]
    fn what_is_not_a_list_of_flat_objects_is_refused_with_where() {
        assert!(csv_from_json(&json!({"phone": "x"})).unwrap_err().contains("JSON array"));
        assert_eq!(csv_from_json(&json!([{"phone": "x"}, 3])).unwrap_err(), "contacts[1] is not an object");
        assert!(csv_from_json(&json!([{"phone": {"n": 1}}])).unwrap_err().starts_with("contacts[0].phone must be"));
        assert!(csv_from_json(&json!([])).unwrap_err().starts_with("no contacts"));
    }
}
