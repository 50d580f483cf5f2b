//! The Liquid the simulator understands: `{{ path }}` replaced by the value at
//! that dotted path of an Execution's context (`flow.data.name`,
//! `widgets.ask.inbound.Body`, `flow.variables.score`,
//! `contact.channel.address`). Plain substitution only: filters after a `|`
//! are ignored, tags (`{% … %}`) are left as written, and a path that leads
//! nowhere renders as nothing, as it does in Studio.

use serde_json::Value;

/// `template` with every `{{ … }}` replaced from `context`.
pub(super) fn render(template: &str, context: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let inside = &rest[start + 2..];
        let Some(end) = inside.find("}}") else {
            // An unclosed `{{` is text, not an expression.
            out.push_str(&rest[start..]);
            return out;
        };
        out.push_str(&expression(&inside[..end], context));
        rest = &inside[end + 2..];
    }
    out.push_str(rest);
    out
}

/// One expression: a quoted literal or a path, with any filters dropped.
fn expression(inner: &str, context: &Value) -> String {
    let head = inner.split('|').next().unwrap_or_default().trim();
    for quote in ['"', '\''] {
        if let Some(literal) = head.strip_prefix(quote).and_then(|h| h.strip_suffix(quote)) {
            return literal.to_string();
        }
    }
    lookup(context, head).map(text).unwrap_or_default()
}

/// The value at a dotted path; numeric segments index arrays.
pub(super) fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(context, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// How a value reads inside text: strings as they are, null as nothing,
/// anything else as its JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "flow": {"data": {"name": "Ada", "visits": 3}, "variables": {"score": "9"}},
            "widgets": {"ask": {"inbound": {"Body": "9"}}},
            "contact": {"channel": {"address": "+12015550123"}},
        })
    }

    #[test]
    fn paths_are_replaced_by_their_values_whatever_the_spacing() {
        let text = "Hi {{flow.data.name}} ({{ contact.channel.address }}), visit {{flow.data.visits}}: {{widgets.ask.inbound.Body}}/{{flow.variables.score}}";
        assert_eq!(render(text, &context()), "Hi Ada (+12015550123), visit 3: 9/9");
    }

    #[test]
    fn unknown_paths_render_empty_and_unclosed_braces_stay_text() {
        assert_eq!(render("[{{flow.data.missing}}][{{trigger.message.Sid}}]", &context()), "[][]");
        assert_eq!(render("a {{flow.data.name", &context()), "a {{flow.data.name");
    }

    #[test]
    fn filters_are_ignored_and_quoted_literals_are_kept() {
        assert_eq!(render("{{ flow.data.name | upcase }} {{ 'x' }}", &context()), "Ada x");
    }
}
