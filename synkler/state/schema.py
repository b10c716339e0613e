"""The state database's tables, indexes and triggers, created if missing each time an agent opens it."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    size      INTEGER NOT NULL DEFAULT 0,
    files     INTEGER NOT NULL DEFAULT 0,
    md5       TEXT NOT NULL,
    state     TEXT NOT NULL,
    peer      TEXT,                       -- the agent this entry came from (or goes to)
    attempt   INTEGER NOT NULL DEFAULT 0, -- the hop attempt the peer asked for
    tries     INTEGER NOT NULL DEFAULT 0, -- local failures of the current step
    path      TEXT,                       -- remote path (dest for upload, source for download)
    stored_as TEXT,                       -- final name at download
    signature TEXT,                       -- stat fingerprint of what upload offered / download placed
    cleanup   TEXT,                       -- cleanup script: agents.base.Cleanup (pending, running, done …)
    reason    TEXT,
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    due       REAL NOT NULL DEFAULT 0     -- earliest time of the next action (retry, expiry)
);
CREATE INDEX IF NOT EXISTS entries_state ON entries(state, due);
CREATE INDEX IF NOT EXISTS entries_name ON entries(name, created);
-- Finished entries oldest first, for pruning the history and for the newest ones `status` shows.
CREATE INDEX IF NOT EXISTS entries_end ON entries(state, updated);
-- The oldest entries on their way, state by state: the presence report lists them every few seconds,
-- and `status` and the alerts show them (with 100,000 on their way, a sort of them all took 25 ms).
CREATE INDEX IF NOT EXISTS entries_age ON entries(state, created);
-- Done entries whose cleanup script needs a person: `status` shows them however old.
CREATE INDEX IF NOT EXISTS entries_cleanup ON entries(cleanup) WHERE cleanup IN ('failed', 'interrupted');
-- What the agent remembers of the entries it pruned: the latest `created` among them (one row).
CREATE TABLE IF NOT EXISTS pruned (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    until REAL NOT NULL
);
-- Signed delivery receipts (synkler.receipts), one per entry and destination (download agent); kept
-- as long as the entry is.
CREATE TABLE IF NOT EXISTS receipts (
    entry       TEXT NOT NULL,
    destination TEXT NOT NULL,
    token       TEXT NOT NULL,            -- <payload>.<signature>, as it was signed
    created     REAL NOT NULL,
    PRIMARY KEY (entry, destination)
);
-- Where an entry stands at each download it goes to (synkler.destinations); kept as long as it is.
CREATE TABLE IF NOT EXISTS destinations (
    entry       TEXT NOT NULL,
    destination TEXT NOT NULL,            -- a download agent's name
    state       TEXT NOT NULL,            -- ROUTED, FETCHING, FETCHED, FAILED, FORGOTTEN
    stored_as   BLOB,                     -- its name there, once fetched (its bytes: names need not be UTF-8)
    reason      TEXT,
    updated     REAL NOT NULL,
    PRIMARY KEY (entry, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS destinations_state ON destinations(destination, state);
-- The files of a bundle (synkler.bundles): many small files that travel as one entry, each placed,
-- checked and cleaned up on its own; kept as long as the bundle's entry is.
CREATE TABLE IF NOT EXISTS members (
    bundle    TEXT NOT NULL,              -- the bundle's entry id
    seq       INTEGER NOT NULL,           -- its number in the bundle (its cleanup script's key)
    name      BLOB NOT NULL,              -- its name (its bytes: names need not be UTF-8)
    size      INTEGER NOT NULL,
    md5       TEXT,                       -- NULL until known (upload: the bundle is hashed)
    signature TEXT,                       -- its fingerprint in file_dir (bundled / placed)
    stored_as BLOB,                       -- download: the name chosen for it in file_dir
    placed    INTEGER NOT NULL DEFAULT 0, -- download: 1 renamed into file_dir, 2 found there already
    cleanup   TEXT,                       -- its cleanup script, as an entry's (pending, running, done …)
    reason    TEXT,
    PRIMARY KEY (bundle, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_name ON members(name);
-- Each entry's metadata (synkler.metadata), as canonical JSON; kept as long as the entry is.
CREATE TABLE IF NOT EXISTS metadata (
    entry TEXT PRIMARY KEY,
    meta  TEXT NOT NULL
);
-- An entry's second hash beside its md5 (`checksum:`, docs/checksums.md), `<alg>:<hex>`; kept as
-- long as the entry is.
CREATE TABLE IF NOT EXISTS checksums (
    entry    TEXT PRIMARY KEY,
    checksum TEXT NOT NULL
);
-- In a pool of centrals (docs/architecture.md, "Who owns an entry"): the entry's ownership, numbered
-- (upload: the current one; central: the one it holds the entry for; download: the highest it saw).
CREATE TABLE IF NOT EXISTS epochs (
    entry TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
);
-- Download: the upload agent each entry came from, as central's `fetch` says (its subdirectory of
-- file_dir with `subdir_per_upload`); kept as long as the entry is.
CREATE TABLE IF NOT EXISTS sources (
    entry  TEXT PRIMARY KEY,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    dest    TEXT NOT NULL,
    body    BLOB NOT NULL,
    created REAL NOT NULL
);
-- What an operator set on the agent as a whole, by name (a central's `drain`: docs/running.md).
CREATE TABLE IF NOT EXISTS flags (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- What an operator asked of one entry (synkler retry | forget | resend), taken by the running agent.
CREATE TABLE IF NOT EXISTS requests (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    entry    TEXT NOT NULL,
    action   TEXT NOT NULL,
    created  REAL NOT NULL,
    answered REAL,                        -- NULL until the agent has taken it
    ok       INTEGER,                     -- 1: done, 0: refused
    answer   TEXT
);
CREATE INDEX IF NOT EXISTS requests_open ON requests(seq) WHERE answered IS NULL;
-- Alerts (synkler.observe.alerts): the conditions a notice said started and no notice said cleared yet,
-- and the notices not sent yet, per channel.
CREATE TABLE IF NOT EXISTS alert_conditions (
    key     TEXT PRIMARY KEY,
    started REAL NOT NULL,
    notice  TEXT NOT NULL                 -- JSON: the notice that said it started
);
CREATE TABLE IF NOT EXISTS alert_notices (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    notice  TEXT NOT NULL,                -- JSON
    created REAL NOT NULL
);
"""


# How many entries are in each state, kept by triggers: `counts` reads a few rows instead of
# counting a million (60 ms), which the presence report asks for every few seconds. Made, and filled
# from the entries already there, once, in one transaction (so two processes opening the database at
# the same time cannot both fill it).
COUNTS = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO state_counts (state, n)
    SELECT state, COUNT(*) FROM entries
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'entries_count_insert')
    GROUP BY state;
CREATE TRIGGER IF NOT EXISTS entries_count_insert AFTER INSERT ON entries BEGIN
    INSERT INTO state_counts (state, n) VALUES (new.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS entries_count_delete AFTER DELETE ON entries BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS entries_count_update AFTER UPDATE OF state ON entries
    WHEN new.state IS NOT old.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
    INSERT INTO state_counts (state, n) VALUES (new.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
COMMIT;
"""
