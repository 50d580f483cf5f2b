//! Who must not be contacted: a suppression names a phone and a scope (every
//! campaign, one kind of campaign, one channel, or one campaign), with the
//! reason and where it came from. Checked when a run imports and again right before each create.
//! Also here: what an ended Execution shows about its contact that calls for
//! a suppression (an opt-out reply, a send Twilio refused for good), read from
//! its contexts without any I/O.

use super::CampaignKind;
use super::text::text_enum;

text_enum! {
    /// How a campaign's Flow reaches people. A number Twilio reports as
    /// unreachable on one channel (a landline for SMS) is suppressed for
    /// that channel only.
    pub enum Channel("channel") {
        Sms = "sms",
        Whatsapp = "whatsapp",
        Voice = "voice",
    }
}

impl Channel {
    /// The channel a sender implies when a campaign does not name one: a
    /// `whatsapp:` address is WhatsApp, anything else SMS (a voice campaign
    /// says `channel = "voice"`).
    pub fn implied_by(from: &str) -> Channel {
        if from.starts_with("whatsapp:") { Channel::Whatsapp } else { Channel::Sms }
    }
}

/// Twilio Messaging's default opt-out keywords: a contact who replies one of
/// these is unsubscribed from every message of the sender, whatever the Flow
/// meant by it.
pub const OPT_OUT_KEYWORDS: [&str; 8] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"];

/// The opt-out keyword a reply is, if it is one (a whole reply, in any case,
/// spaces around it ignored).
pub fn opt_out_keyword(reply: &str) -> Option<&'static str> {
    let reply = reply.trim();
    OPT_OUT_KEYWORDS.iter().copied().find(|k| k.eq_ignore_ascii_case(reply))
}

/// Every contact reply in an Execution's context (each widget's
/// `inbound.Body`) that is an opt-out keyword.
pub fn opt_outs_in(context: &serde_json::Value) -> Vec<&'static str> {
    let Some(widgets) = context["widgets"].as_object() else { return Vec::new() };
    widgets.values().filter_map(|w| w["inbound"]["Body"].as_str().and_then(opt_out_keyword)).collect()
}

/// Twilio's error for a message to a recipient who unsubscribed from the
/// sender (replied STOP): the same whether a create or a Flow's own send met it.
pub const UNSUBSCRIBED: i64 = 21610;

/// Twilio's errors for a number that cannot receive SMS at all. The list is
/// small on purpose: each error says something lasting about the number
/// itself, so no later SMS campaign can reach it either.
///
/// - 21614, "'To' number is not a valid mobile number": a landline, or a
///   number no carrier texts (Twilio's test number +15005550009 answers it).
/// - 21635, "'To' number cannot be a landline": a landline, where Twilio
///   does not even try.
///
/// Left out because they are not about the number: 21612 (no route from this
/// sender), 21408 (the account's permissions for a region), 21211 (a
/// malformed number, which an import already refuses), and the 3000x
/// delivery failures (a phone that is off, a carrier that is down — these pass).
pub const NOT_MOBILE: [(i64, &str); 2] = [(21614, "not a mobile number"), (21635, "a landline")];

/// The events a messaging widget leaves on when its message failed
/// (`send-message`'s `failed`, `send-and-wait-for-reply`'s `deliveryFailure`).
pub const SEND_FAILED_EVENTS: [&str; 2] = ["failed", "deliveryFailure"];

/// What a Twilio error on a send says about its contact: the scope to
/// suppress them in and why, or `None` when the error is about the message,
/// the sender or the account. An unsubscribed contact is kept from every
/// campaign; a number that cannot receive SMS only from SMS campaigns (a voice
/// campaign may still call it, and a WhatsApp send never fails this way).
pub fn suppression_for_send_error(code: i64, channel: Channel) -> Option<(Scope, String)> {
    if code == UNSUBSCRIBED {
        return Some((Scope::All, format!("Twilio error {code}: the recipient unsubscribed")));
    }
    let (_, what) = NOT_MOBILE.iter().find(|(c, _)| *c == code).filter(|_| channel == Channel::Sms)?;
    Some((Scope::Channel(Channel::Sms), format!("Twilio error {code}: {what}")))
}

/// Every Twilio error code on a message the Flow sent to `contact`, as an
/// Execution's (or one Step's) context shows it. A messaging widget's entry
/// under `widgets` holds the message it sent under `outbound` (the Message
/// resource as created; its own `ErrorCode` is read too, as a failed Message
/// carries one) and, once the message failed, the fields of Twilio's status
/// callback beside it: `MessageStatus: "failed"`, `ErrorCode: "21610"` (a
/// string, as callbacks post it), `To`, `From`. A message to another address
/// (a widget that texts the staff) says nothing about the contact and is
/// passed over.
pub fn send_errors_in(context: &serde_json::Value, contact: &str) -> Vec<i64> {
    let Some(widgets) = context["widgets"].as_object() else { return Vec::new() };
    let address = |v: &serde_json::Value| v.as_str().map(|a| a.trim().trim_start_matches("whatsapp:").to_string());
    let code = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let mut codes: Vec<i64> = widgets
        .values()
        .filter(|w| {
            // Studio's default `to` is the contact, so a message that does not
            // say where it went went to them.
            address(&w["To"]).or_else(|| address(&w["outbound"]["To"])).is_none_or(|to| to == contact)
        })
        .flat_map(|w| [code(&w["ErrorCode"]), code(&w["outbound"]["ErrorCode"])])
        .flatten()
        .filter(|&c| c > 0)
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// Every suppression an ended Execution calls for, read from its context and
/// its Steps' contexts (a widget that ran twice keeps only its last entry in
/// the former): a reply that is an opt-out keyword (scope `all`), and a send
/// to `contact` that failed with an error that says something lasting about
/// them ([`suppression_for_send_error`]). Each (scope, reason) once.
pub fn suppressions_learned<'a>(
    contexts: impl IntoIterator<Item = &'a serde_json::Value>,
    contact: &str,
    channel: Channel,
) -> Vec<(Scope, String)> {
    let mut learned: Vec<(Scope, String)> = Vec::new();
    for context in contexts {
        let replies = opt_outs_in(context).into_iter().map(|keyword| (Scope::All, format!("replied {keyword}")));
        let errors =
            send_errors_in(context, contact).into_iter().filter_map(|c| suppression_for_send_error(c, channel));
        for found in replies.chain(errors) {
            if !learned.contains(&found) {
                learned.push(found);
            }
        }
    }
    learned
}

/// What a suppression covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every campaign.
    All,
    /// Every campaign of one kind (`reminder`, `delivery-notice`, `survey`).
    Kind(CampaignKind),
    /// Every campaign on one channel (`sms`, `whatsapp`, `voice`).
    Channel(Channel),
    /// One campaign, by name.
    Campaign(String),
}

impl Scope {
    /// Reads a scope: `all`, a campaign kind, a channel, or a campaign name
    /// (`[a-z0-9-]+`). A campaign named like a kind or a channel is reached
    /// through the kind or the channel.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "all" {
            return Ok(Scope::All);
        }
        if let Ok(kind) = text.parse::<CampaignKind>() {
            return Ok(Scope::Kind(kind));
        }
        if let Ok(channel) = text.parse::<Channel>() {
            return Ok(Scope::Channel(channel));
        }
        let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Scope::Campaign(text.to_string()))
        } else {
            Err(format!(
                "scope {text:?} must be all, a campaign kind ({}), a channel ({}) or a campaign name",
                CampaignKind::choices(),
                Channel::choices()
            ))
        }
    }

    /// The one text form.
    pub fn as_text(&self) -> String {
        match self {
            Scope::All => "all".into(),
            Scope::Kind(kind) => kind.as_str().into(),
            Scope::Channel(channel) => channel.as_str().into(),
            Scope::Campaign(name) => name.clone(),
        }
    }

    /// The scopes that cover a campaign: every suppression under any of these
    /// applies to it.
    pub fn covering(campaign: &str, kind: CampaignKind, channel: Channel) -> [String; 4] {
        ["all".into(), kind.as_str().into(), channel.as_str().into(), campaign.into()]
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_is_an_opt_out_keyword_is_found_in_any_widget() {
        let ctx = serde_json::json!({"widgets": {"ask": {"inbound": {"Body": " stop "}}, "again": {"inbound": {"Body": "stop it"}}}});
        assert_eq!(opt_outs_in(&ctx), ["STOP"]);
        assert_eq!(opt_out_keyword("Unsubscribe"), Some("UNSUBSCRIBE"));
        assert_eq!(opt_out_keyword("2"), None);
    }

    /// An Execution Context as Studio serves it after a `send-message` whose
    /// message a Messaging Service accepted and Twilio then failed: the
    /// Message as created under `outbound`, the status callback beside it
    /// (shape from a recorded Studio answer; numbers and SIDs made up).
    fn failed_send(code: &str, to: &str) -> serde_json::Value {
        serde_json::json!({
            "widgets": {
                "notify": {
                    "MessageSid": "SM5a3e4eba25ba4aa4beff811a961f4383",
                    "SmsStatus": "failed",
                    "MessagingServiceSid": "MG00000000000000000000000000000000",
                    "ApiVersion": "2010-04-01",
                    "ErrorCode": code,
                    "To": to,
                    "From": "+15017122661",
                    "MessageStatus": "failed",
                    "AccountSid": "AC00000000000000000000000000000000",
                    "outbound": {
                        "Status": "accepted", "ErrorCode": null, "Direction": "outbound-api", "ErrorMessage": null,
                        "Sid": "SM5a3e4eba25ba4aa4beff811a961f4383", "Body": "Your appointment is tomorrow",
                        "To": to, "NumMedia": "0", "NumSegments": "0"
                    },
                    "SmsSid": "SM5a3e4eba25ba4aa4beff811a961f4383"
                },
                "after_failure": {"body": "", "status_code": 200, "content_type": "text/plain"}
            },
            "contact": {"channel": {"address": to}},
            "flow": {"data": {"name": "Ada"}, "variables": {}}
        })
    }

    #[test]
    fn a_failed_sends_error_is_read_from_the_status_callback_beside_the_message() {
        assert_eq!(send_errors_in(&failed_send("21610", "+12015550100"), "+12015550100"), [21610]);
        assert_eq!(send_errors_in(&failed_send(" 21614 ", "+12015550100"), "+12015550100"), [21614]);
        // A create that failed outright leaves its error on the Message itself.
        let refused = serde_json::json!({"widgets": {"ask": {"outbound": {"To": "whatsapp:+12015550100", "ErrorCode": 21610, "Status": "failed"}}}});
        assert_eq!(send_errors_in(&refused, "+12015550100"), [21610]);
        let to_the_staff = failed_send("21610", "+12015550999");
        assert!(
            send_errors_in(&to_the_staff, "+12015550100").is_empty(),
            "another address's error is not the contact's"
        );
        let delivered = serde_json::json!({"widgets": {
            "notify": {"outbound": {"Status": "accepted", "ErrorCode": null, "To": "+12015550100"}},
            "ask": {"inbound": {"Body": "2", "From": "+12015550100", "To": "+15017122661"}, "outbound": {"ErrorCode": ""}},
            "lookup": {"parsed": {"ErrorCode": 21610}}
        }});
        assert!(send_errors_in(&delivered, "+12015550100").is_empty());
        assert!(send_errors_in(&serde_json::Value::Null, "+12015550100").is_empty());
    }

    #[test]
    fn only_errors_about_the_number_itself_suppress_and_not_mobile_only_for_sms() {
        let all = (Scope::All, "Twilio error 21610: the recipient unsubscribed".to_string());
        for channel in [Channel::Sms, Channel::Whatsapp, Channel::Voice] {
            assert_eq!(suppression_for_send_error(21610, channel), Some(all.clone()));
        }
        let sms = Scope::Channel(Channel::Sms);
        assert_eq!(
            suppression_for_send_error(21614, Channel::Sms),
            Some((sms.clone(), "Twilio error 21614: not a mobile number".to_string()))
        );
        assert_eq!(suppression_for_send_error(21635, Channel::Sms).map(|s| s.0), Some(sms));
        assert_eq!(suppression_for_send_error(21614, Channel::Voice), None, "a voice campaign may still call it");
        assert_eq!(suppression_for_send_error(21614, Channel::Whatsapp), None);
        for not_about_the_number in [21211, 21408, 21612, 30003, 30006, 30007] {
            assert_eq!(suppression_for_send_error(not_about_the_number, Channel::Sms), None, "{not_about_the_number}");
        }
    }

    #[test]
    fn an_execution_teaches_each_suppression_once_whichever_context_shows_it() {
        let contact = "+12015550100";
        let mut replied = failed_send("21614", contact);
        replied["widgets"]["ask"] = serde_json::json!({"inbound": {"Body": "Stop"}});
        let unsubscribed = failed_send("21610", contact);

        let learned = suppressions_learned([&replied, &unsubscribed, &replied], contact, Channel::Sms);

        assert_eq!(
            learned,
            [
                (Scope::All, "replied STOP".to_string()),
                (Scope::Channel(Channel::Sms), "Twilio error 21614: not a mobile number".to_string()),
                (Scope::All, "Twilio error 21610: the recipient unsubscribed".to_string()),
            ]
        );
        assert_eq!(suppressions_learned([&failed_send("21614", contact)], contact, Channel::Voice), []);
    }

    #[test]
    fn scopes_are_all_a_kind_a_channel_or_a_campaign() {
        assert_eq!(Scope::parse("all").unwrap(), Scope::All);
        assert_eq!(Scope::parse("sms").unwrap(), Scope::Channel(Channel::Sms));
        assert_eq!(Scope::parse("survey").unwrap(), Scope::Kind(CampaignKind::Survey));
        assert_eq!(Scope::parse("spring-promo").unwrap(), Scope::Campaign("spring-promo".into()));
        assert!(Scope::parse("Spring Promo").unwrap_err().contains("must be all"));
        for text in ["all", "delivery-notice", "voice", "x-1"] {
            assert_eq!(Scope::parse(text).unwrap().as_text(), text);
        }
        assert_eq!(Scope::covering("c", CampaignKind::Reminder, Channel::Sms), ["all", "reminder", "sms", "c"]);
        assert_eq!(Channel::implied_by("whatsapp:+15005550006"), Channel::Whatsapp);
        assert_eq!(Channel::implied_by("MG0123"), Channel::Sms);
    }
}
