-- A run's jobs are paged in id order (the API's keyset paging, the
-- dashboard's run page). Without this index a page of a run read every job
-- of the run through the claim index and sorted them: a million-job run cost
-- seconds per page, however deep. With it a page is a range read of the run's
-- entries from the `after` id on; `state` is in the index so that a page of
-- one state skips the others without reading their rows.

CREATE INDEX jobs_page ON jobs (run_id, id, state);
