-- The suppression list: who must not be contacted, by which campaigns. Scope is
-- `all`, a campaign kind, or a campaign name. Entries are never purged.

CREATE TABLE suppressions (
    phone       TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    reason      TEXT,
    -- where it came from: cli, api, import, the messaging webhook, Studio
    source      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (phone, scope)
);
