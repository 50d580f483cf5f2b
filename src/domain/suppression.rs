//! Who must not be contacted: a suppression names a phone and a scope (every
//! campaign, one kind of campaign, or one campaign), with the reason and where
//! it came from. Checked when a run imports and again right before each create.

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
