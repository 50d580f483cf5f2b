-- Contacts pushed over HTTP to a campaign with trigger = "api": the key a
-- client gave each contact (or its request's Idempotency-Key and the
-- contact's place in it), so a repeated push finds the job the first made.

CREATE TABLE push_keys (
    campaign    TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (campaign, key)
);
