/*
 * fleet_schema - the fleet's PostgreSQL schema (docs/FLEET.md "Schema"), applied by
 * `spoolctl fleet init` in one transaction. Every statement is idempotent (IF NOT EXISTS,
 * CREATE OR REPLACE), so init also upgrades a database of an older schema version:
 * FLEET_SCHEMA_VERSION is written last.
 *
 * Trust: nodes insert their own events and nothing else. A node's role is a member of
 * spoold_node; row-level security ties it to the node that spoold.nodes names for it
 * (spoold.my_node()), so it can neither write another node's events nor see or change
 * another node's actions. messages and recipients are written only by the trigger on
 * events (SECURITY DEFINER, owned by the admin who ran init); node roles have no rights
 * on them at all.
 */
#ifndef SPOOLCTL_FLEET_SCHEMA_H
#define SPOOLCTL_FLEET_SCHEMA_H

#define FLEET_SCHEMA_VERSION 1

static const char fleet_schema_sql[] =
    "SET client_min_messages = warning;\n"
    "CREATE SCHEMA IF NOT EXISTS spoold;\n"
    "DO $$ BEGIN\n"
    "  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'spoold_node') THEN\n"
    "    CREATE ROLE spoold_node NOLOGIN;\n"
    "  END IF;\n"
    "END $$;\n"
    "CREATE TABLE IF NOT EXISTS spoold.schema_version (version int NOT NULL,\n"
    "  applied timestamptz NOT NULL DEFAULT now());\n"
    "CREATE TABLE IF NOT EXISTS spoold.nodes (node text PRIMARY KEY,\n"
    "  role name NOT NULL UNIQUE, added timestamptz NOT NULL DEFAULT now());\n"
    /* The audit trail: one row per record, idempotent on (node, qid, seq). */
    "CREATE TABLE IF NOT EXISTS spoold.events (node text NOT NULL, qid text NOT NULL,\n"
    "  seq bigint NOT NULL, kind text NOT NULL, at timestamptz NOT NULL,\n"
    "  sender text, rcpts text[], subject text, message_id text, hdr_from text,\n"
    "  size bigint, class text, viruses text[], conn text, detail text,\n"
    "  received timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (node, qid, seq));\n"
    "CREATE TABLE IF NOT EXISTS spoold.messages (node text NOT NULL, qid text NOT NULL,\n"
    "  message_id text, sender text, subject text, hdr_from text, size bigint,\n"
    "  first_seen timestamptz, last_seen timestamptz, state text, state_at timestamptz,\n"
    "  state_seq bigint, class text, viruses text[], PRIMARY KEY (node, qid));\n"
    "CREATE TABLE IF NOT EXISTS spoold.recipients (node text NOT NULL, qid text NOT NULL,\n"
    "  rcpt text NOT NULL, status text NOT NULL DEFAULT 'pending',\n"
    "  release_status text, changed timestamptz, PRIMARY KEY (node, qid, rcpt));\n"
    "CREATE TABLE IF NOT EXISTS spoold.actions (id bigserial PRIMARY KEY,\n"
    "  node text NOT NULL, qid text NOT NULL,\n"
    "  action text NOT NULL CHECK (action IN ('release', 'delete')),\n"
    "  requested_by name NOT NULL DEFAULT session_user,\n"
    "  requested_at timestamptz NOT NULL DEFAULT now(),\n"
    "  status text NOT NULL DEFAULT 'pending'\n"
    "    CHECK (status IN ('pending', 'running', 'done', 'failed')),\n"
    "  result text, started_at timestamptz, done_at timestamptz);\n"
    /* The searches of spoolctl fleet search, and retention by time. */
    "CREATE INDEX IF NOT EXISTS messages_sender ON spoold.messages (lower(sender));\n"
    "CREATE INDEX IF NOT EXISTS messages_subject ON spoold.messages (lower(subject));\n"
    "CREATE INDEX IF NOT EXISTS messages_msgid ON spoold.messages (message_id);\n"
    "CREATE INDEX IF NOT EXISTS messages_qid ON spoold.messages (qid);\n"
    "CREATE INDEX IF NOT EXISTS messages_state ON spoold.messages (state, last_seen);\n"
    "CREATE INDEX IF NOT EXISTS messages_last ON spoold.messages (last_seen);\n"
    "CREATE INDEX IF NOT EXISTS recipients_rcpt ON spoold.recipients (lower(rcpt));\n"
    "CREATE INDEX IF NOT EXISTS events_at ON spoold.events (at);\n"
    "CREATE INDEX IF NOT EXISTS actions_pending ON spoold.actions (node, status);\n"
    "CREATE OR REPLACE FUNCTION spoold.my_node() RETURNS text LANGUAGE sql STABLE\n"
    "  SECURITY DEFINER SET search_path = pg_catalog, spoold AS\n"
    "  $$ SELECT node FROM spoold.nodes WHERE role = session_user $$;\n"
    /* One event into the message and recipient rows. State follows the latest event by
     * (time, seq): records of one node may arrive in any order. */
    "CREATE OR REPLACE FUNCTION spoold.event_apply() RETURNS trigger LANGUAGE plpgsql\n"
    "  SECURITY DEFINER SET search_path = pg_catalog, spoold AS $$\n"
    "BEGIN\n"
    "  INSERT INTO spoold.messages AS m (node, qid, message_id, sender, subject,\n"
    "      hdr_from, size, first_seen, last_seen, state, state_at, state_seq, class,\n"
    "      viruses)\n"
    "    VALUES (NEW.node, NEW.qid, NEW.message_id, NEW.sender, NEW.subject,\n"
    "      NEW.hdr_from, NEW.size, NEW.at, NEW.at, NEW.kind, NEW.at, NEW.seq,\n"
    "      NEW.class, NEW.viruses)\n"
    "  ON CONFLICT (node, qid) DO UPDATE SET\n"
    "    message_id = coalesce(m.message_id, excluded.message_id),\n"
    "    sender = coalesce(m.sender, excluded.sender),\n"
    "    subject = coalesce(m.subject, excluded.subject),\n"
    "    hdr_from = coalesce(m.hdr_from, excluded.hdr_from),\n"
    "    size = coalesce(m.size, excluded.size),\n"
    "    first_seen = least(m.first_seen, excluded.first_seen),\n"
    "    last_seen = greatest(m.last_seen, excluded.last_seen),\n"
    "    class = CASE WHEN excluded.class IS NULL THEN m.class\n"
    "      WHEN m.class IN ('virus', 'banned') AND excluded.class NOT IN ('virus', 'banned')\n"
    "      THEN m.class ELSE excluded.class END,\n"
    "    viruses = coalesce(excluded.viruses, m.viruses),\n"
    "    state = CASE WHEN (excluded.state_at, excluded.state_seq) >= (m.state_at, m.state_seq)\n"
    "      OR m.state_at IS NULL THEN excluded.state ELSE m.state END,\n"
    "    state_seq = CASE WHEN (excluded.state_at, excluded.state_seq) >= (m.state_at,\n"
    "      m.state_seq) OR m.state_at IS NULL THEN excluded.state_seq ELSE m.state_seq END,\n"
    "    state_at = greatest(m.state_at, excluded.state_at);\n"
    "  IF NEW.kind IN ('intake', 'badmail') AND NEW.rcpts IS NOT NULL THEN\n"
    "    INSERT INTO spoold.recipients (node, qid, rcpt, changed)\n"
    "      SELECT NEW.node, NEW.qid, r, NEW.at FROM unnest(NEW.rcpts) r\n"
    "      ON CONFLICT DO NOTHING;\n"
    "  END IF;\n"
    "  IF NEW.kind IN ('delivered', 'bounced') AND NEW.rcpts IS NOT NULL THEN\n"
    "    INSERT INTO spoold.recipients AS x (node, qid, rcpt, status, changed)\n"
    "      SELECT NEW.node, NEW.qid, r, NEW.kind, NEW.at FROM unnest(NEW.rcpts) r\n"
    "      ON CONFLICT (node, qid, rcpt) DO UPDATE SET status = excluded.status,\n"
    "        changed = excluded.changed;\n"
    "  END IF;\n"
    "  IF NEW.kind IN ('released', 'deleted', 'expired') THEN\n"
    "    UPDATE spoold.recipients SET release_status = NEW.kind, changed = NEW.at\n"
    "      WHERE node = NEW.node AND qid = NEW.qid;\n"
    "  END IF;\n"
    "  RETURN NULL;\n"
    "END $$;\n"
    "DROP TRIGGER IF EXISTS events_apply ON spoold.events;\n"
    "CREATE TRIGGER events_apply AFTER INSERT ON spoold.events\n"
    "  FOR EACH ROW EXECUTE FUNCTION spoold.event_apply();\n"
    "CREATE OR REPLACE FUNCTION spoold.action_notify() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN PERFORM pg_notify('spoold_actions', NEW.node); RETURN NULL; END $$;\n"
    "DROP TRIGGER IF EXISTS actions_notify ON spoold.actions;\n"
    "CREATE TRIGGER actions_notify AFTER INSERT ON spoold.actions\n"
    "  FOR EACH ROW EXECUTE FUNCTION spoold.action_notify();\n"
    /* Roles and row-level security. */
    "REVOKE ALL ON ALL TABLES IN SCHEMA spoold FROM PUBLIC;\n"
    "GRANT USAGE ON SCHEMA spoold TO spoold_node;\n"
    "GRANT INSERT, SELECT ON spoold.events TO spoold_node;\n"
    "GRANT SELECT, UPDATE (status, result, started_at, done_at) ON spoold.actions\n"
    "  TO spoold_node;\n"
    "GRANT EXECUTE ON FUNCTION spoold.my_node() TO spoold_node;\n"
    "ALTER TABLE spoold.events ENABLE ROW LEVEL SECURITY;\n"
    "ALTER TABLE spoold.actions ENABLE ROW LEVEL SECURITY;\n"
    "DROP POLICY IF EXISTS events_own ON spoold.events;\n"
    "CREATE POLICY events_own ON spoold.events TO spoold_node\n"
    "  USING (node = spoold.my_node()) WITH CHECK (node = spoold.my_node());\n"
    "DROP POLICY IF EXISTS actions_own ON spoold.actions;\n"
    "CREATE POLICY actions_own ON spoold.actions TO spoold_node\n"
    "  USING (node = spoold.my_node()) WITH CHECK (node = spoold.my_node());\n";

#endif
