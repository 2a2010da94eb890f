-- Which Sync stream a node's "connected" flag belongs to. Every hello takes the next number;
-- a stream that ends clears the flag only if it is still the node's latest, so an agent that
-- failed over to another replica is not shown disconnected when its old stream, on the first
-- replica, finally notices it is gone.
ALTER TABLE nodes ADD COLUMN sync_session bigint NOT NULL DEFAULT 0;
