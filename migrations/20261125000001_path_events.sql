-- `exec` and `files` decisions: the resolved path, and the accesses a file open asked for
-- (bit 1 read, bit 2 write). Network events keep the defaults.
ALTER TABLE events ADD COLUMN path text NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN access smallint NOT NULL DEFAULT 0;
