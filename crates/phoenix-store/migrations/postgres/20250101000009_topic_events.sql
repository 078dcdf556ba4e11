-- Real-time events (the WebSocket hub, /api/v1/ws): each topic (`experiments`,
-- `experiments/{id}`, `fleet`, `kpis/{id}`) numbers its events 1, 2, 3, … The counter row of a
-- topic is bumped (and so locked) in the transaction that appends, so numbers are gap-free and
-- unique across API replicas and a topic's events commit in number order; a client that
-- reconnects with the last number it saw reads what it missed from here.
CREATE TABLE topic_seqs (
    topic    text PRIMARY KEY,
    last_seq bigint NOT NULL
);

CREATE TABLE topic_events (
    topic text NOT NULL,
    seq   bigint NOT NULL,
    kind  text NOT NULL,
    at    timestamptz NOT NULL,
    data  jsonb NOT NULL,
    PRIMARY KEY (topic, seq)
);

-- Retention sweeps by age.
CREATE INDEX topic_events_at ON topic_events (at);

-- Which agents the fleet topic last announced online: a heartbeat after silence (or the first
-- one) flips a row to online, silence past `agent_offline_after` flips it back; only the
-- replica whose statement flips a row announces it.
CREATE TABLE agent_presence (
    host_id    text PRIMARY KEY,
    online     boolean NOT NULL,
    changed_at timestamptz NOT NULL
);
