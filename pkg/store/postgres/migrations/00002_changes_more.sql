-- +goose Up
-- A change that is not the last of its transaction: watchers that must not
-- act on half a transaction wait for the change without it. Changes
-- recorded before this column existed read as one transaction each, as
-- watchers took them then.
ALTER TABLE ursa_changes ADD COLUMN more boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE ursa_changes DROP COLUMN more;
