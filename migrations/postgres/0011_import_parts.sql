-- An import into PostgreSQL wrote each batch in one transaction, and one
-- server backend did all of a batch's work (the jobs' index entries above
-- all) while the other cores waited: a million-row import took about 25 s,
-- the server busy for 20 s of it. Each batch is now written in parts side
-- by side, each part on its own connection in its own transaction; a row's
-- part is decided by its phone text, so the first row of a number is still
-- the one kept (see `part_of` in the code).
--
-- Each part records the last CSV line it holds here, element i + 1 for
-- part i (NULL: through `import_line`). An interrupted import resumes after
-- `import_line`, skipping the lines after it that a part ahead holds (read
-- from `jobs` and `import_rows`). `import_line` keeps its meaning: every
-- part holds every row through it, so an instance
-- of the version before this one resuming the import reads its rows again
-- from there (the rows a part already holds are then counted again, as
-- duplicates or refused rows: nothing is lost and no job is written twice,
-- the (phone, run) index keeps one).

ALTER TABLE runs ADD COLUMN import_part_lines BIGINT[];
