-- Real-time events (the WebSocket hub, /api/v1/ws): each topic (`experiments`,
-- `experiments/{id}`, `fleet`, `kpis/{id}`) numbers its events 1, 2, 3, … The counter row of a
-- topic is bumped in the transaction that appends, so the numbers are gap-free and unique; a
-- client that reconnects with the last number it saw reads what it missed from here.
CREATE TABLE topic_seqs (
    topic    TEXT PRIMARY KEY NOT NULL,
    last_seq INTEGER NOT NULL
) STRICT;

CREATE TABLE topic_events (
    topic TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    at    INTEGER NOT NULL,
    data  TEXT NOT NULL,
    PRIMARY KEY (topic, seq)
) STRICT, WITHOUT ROWID;

-- Retention sweeps by age.
CREATE INDEX topic_events_at ON topic_events (at);

-- Which agents the fleet topic last announced online: a heartbeat after silence (or the first
-- one) flips a row to online, silence past `agent_offline_after` flips it back; only the
-- replica whose statement flips a row announces it.
CREATE TABLE agent_presence (
    host_id    TEXT PRIMARY KEY NOT NULL,
    online     INTEGER NOT NULL,
    changed_at INTEGER NOT NULL
) STRICT;
