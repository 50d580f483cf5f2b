-- Every job of a run stored its Parameters as a JSON object, the keys
-- repeated in each: on a ledger of ten million finished jobs whose campaign
-- passes three Parameters, 30 of the 326 bytes a job cost were those keys
-- with their quotes and colons. The run now keeps its jobs' keys once,
-- a JSON array in the order the import renders them (the first job written
-- names them), and a job whose keys are the run's stores its values alone, a
-- JSON array in the same order. A job with other keys (a pushed contact with
-- other fields) stores an object as before, and so does every job written
-- before this migration: a job's Parameters are an array of values when the
-- text starts with `[`, an object when it starts with `{`.

ALTER TABLE runs ADD COLUMN parameter_keys TEXT;
