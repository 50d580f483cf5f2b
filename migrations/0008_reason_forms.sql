-- One form for every job reason: the keyword, then ": " and the details.
-- Earlier versions wrote a damaged ledger's Parameters as "invalid parameters
-- in the ledger: …"; it reads now as the `invalid` keyword with its details.

UPDATE jobs SET reason = 'invalid: ' || substr(reason, 9) WHERE reason LIKE 'invalid parameters%';
