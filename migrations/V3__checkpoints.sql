-- Checkpoints: the exchange's snapshots (account partitions and symbols), kept in
-- PostgreSQL as well as on the node's disk, so that a node that lost its disk (or a new
-- one) starts from the newest checkpoint and reads only the log's tail after it, not a
-- history the log may no longer keep. `state` is the snapshot file itself; its name says
-- where in the logs it stands.
CREATE TABLE checkpoints (
    log_prefix       TEXT NOT NULL,          -- the exchange's topic prefix: whose logs
    kind             TEXT NOT NULL,          -- 'account' (a partition) or 'symbol'
    name             TEXT NOT NULL,          -- the partition number or the symbol
    file             TEXT NOT NULL,          -- the snapshot's file name (sorts by age)
    state            BYTEA NOT NULL,
    stored_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (log_prefix, kind, name, file)
);

-- `accounts` and `positions` hold the newest account checkpoint in readable form: each
-- row says which partition it belongs to and that partition's place in its log
-- (accounts.adjusted) and, per symbol, in the symbol's command log.
ALTER TABLE accounts ADD COLUMN account_partition INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN log_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE positions ADD COLUMN account_partition INTEGER NOT NULL DEFAULT 0;
ALTER TABLE positions ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX accounts_partition ON accounts (account_partition);
CREATE INDEX positions_partition ON positions (account_partition);

-- Per account partition and symbol: the command-log offset up to which the checkpoint
-- includes that symbol's results.
CREATE TABLE checkpoint_offsets (
    account_partition INTEGER NOT NULL,
    symbol           TEXT NOT NULL,
    log_offset       BIGINT NOT NULL,
    PRIMARY KEY (account_partition, symbol)
);
