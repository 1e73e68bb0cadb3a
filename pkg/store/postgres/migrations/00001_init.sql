-- +goose Up
-- One row: the store revision. Every write transaction locks it first, which
-- orders writes so that revisions are gapless and follow commit order.
CREATE TABLE ursa_revision (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision bigint  NOT NULL
);
INSERT INTO ursa_revision (revision) VALUES (0);

CREATE TABLE ursa_resources (
    type       text        NOT NULL,
    mesh       text        NOT NULL DEFAULT '',
    name       text        NOT NULL,
    version    bigint      NOT NULL,
    revision   bigint      NOT NULL,
    labels     jsonb       NOT NULL DEFAULT '{}',
    document   jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (type, mesh, name)
);
CREATE INDEX ursa_resources_mesh ON ursa_resources (mesh);
CREATE INDEX ursa_resources_labels ON ursa_resources USING gin (labels jsonb_path_ops);

-- The change log watchers read from; the last N changes are kept.
CREATE TABLE ursa_changes (
    revision   bigint      PRIMARY KEY,
    op         smallint    NOT NULL,
    type       text        NOT NULL,
    mesh       text        NOT NULL,
    name       text        NOT NULL,
    document   jsonb       NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE ursa_changes;
DROP TABLE ursa_resources;
DROP TABLE ursa_revision;
