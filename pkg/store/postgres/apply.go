package postgres

import (
	"context"

	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

type existing struct {
	version int64
	created time.Time
	res     api.Resource
}

// Apply implements store.Store in one transaction of four round trips at
// most, whatever the batch size: read what exists, check meshes, then write
// every row and delete every key in one pipeline.
func (s *Store) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	puts = store.SortPuts(puts)
	for i, r := range puts {
		puts[i] = store.Clone(r)
	}
	what := fmt.Sprintf("apply %d puts, %d deletes", len(puts), len(deletes))
	changes, err := s.write(ctx, what, func(tx pgx.Tx, rev int64) ([]change, error) {
		old, err := readExisting(ctx, tx, puts)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if err := checkMeshes(ctx, tx, puts); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		for _, r := range puts {
			if v := r.GetMeta().Version; v != 0 {
				if o, ok := old[api.KeyOf(r)]; !ok || o.version != v {
					return nil, fmt.Errorf("%s: %s at version %d: %w", what, api.KeyOf(r), v, store.ErrConflict)
				}
			}
		}
		var (
			changes []change
			b       = &pgx.Batch{}
		)
		for _, r := range puts {
			key, meta, now := api.KeyOf(r), r.GetMeta(), store.Now()
			op := store.OpCreate
			meta.Version, meta.CreationTime, meta.ModificationTime = 1, now, now
			if o, ok := old[key]; ok {
				if api.SameContent(o.res, r) {
					continue
				}
				op = store.OpUpdate
				meta.Version, meta.CreationTime = o.version+1, o.created.UTC()
			}
			doc, labels, err := encode(r)
			if err != nil {
				return nil, err
			}
			b.Queue(`INSERT INTO ursa_resources (type, mesh, name, version, revision, labels, document, created_at, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
				ON CONFLICT (type, mesh, name) DO UPDATE SET version = EXCLUDED.version, revision = EXCLUDED.revision,
					labels = EXCLUDED.labels, document = EXCLUDED.document, updated_at = EXCLUDED.updated_at`,
				key.Type, key.Mesh, key.Name, meta.Version, rev+int64(len(changes)), labels, doc, meta.CreationTime, meta.ModificationTime)
			changes = append(changes, change{op: op, res: r, doc: doc})
		}
		for _, key := range deletes {
			if key.Type == "Mesh" {
				b.Queue(`DELETE FROM ursa_resources WHERE mesh = $1 RETURNING type, document`, key.Name)
			}
			b.Queue(`DELETE FROM ursa_resources WHERE type = $1 AND mesh = $2 AND name = $3 RETURNING type, document`, key.Type, key.Mesh, key.Name)
		}
		if b.Len() == 0 {
			return nil, nil
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for range len(changes) {
			if _, err := br.Exec(); err != nil {
				return nil, fmt.Errorf("%s: %w", what, classify(err))
			}
		}
		for _, key := range deletes {
			n := 1
			if key.Type == "Mesh" {
				n = 2
			}
			for range n {
				rows, err := br.Query()
				if err != nil {
					return nil, fmt.Errorf("%s: %w", what, classify(err))
				}
				deleted, err := collectDeleted(rows)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", what, err)
				}
				changes = append(changes, deleted...)
			}
		}
		if err := br.Close(); err != nil {
			return nil, fmt.Errorf("%s: %w", what, classify(err))
		}
		return changes, nil
	})
	return len(changes), err
}

// readExisting returns the stored rows among puts' keys.
func readExisting(ctx context.Context, tx pgx.Tx, puts []api.Resource) (map[api.Key]existing, error) {
	out := map[api.Key]existing{}
	if len(puts) == 0 {
		return out, nil
	}
	types, meshes, names := make([]string, len(puts)), make([]string, len(puts)), make([]string, len(puts))
	for i, r := range puts {
		k := api.KeyOf(r)
		types[i], meshes[i], names[i] = k.Type, k.Mesh, k.Name
	}
	rows, err := tx.Query(ctx, `SELECT r.type, r.mesh, r.name, r.version, r.created_at, r.document FROM ursa_resources r
		JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(type, mesh, name) USING (type, mesh, name)`, types, meshes, names)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			k   api.Key
			e   existing
			doc []byte
		)
		if err := rows.Scan(&k.Type, &k.Mesh, &k.Name, &e.version, &e.created, &doc); err != nil {
			return nil, classify(err)
		}
		if e.res, err = store.DecodeStored(k.Type, doc); err != nil {
			return nil, err
		}
		out[k] = e
	}
	return out, classify(rows.Err())
}

// checkMeshes refuses a mesh-scoped put whose mesh is neither stored nor put.
func checkMeshes(ctx context.Context, tx pgx.Tx, puts []api.Resource) error {
	put, need := map[string]bool{}, map[string]api.Resource{}
	for _, r := range puts {
		m := r.GetMeta()
		if m.Type == "Mesh" {
			put[m.Name] = true
		} else if d, ok := api.Lookup(m.Type); ok && d.Scope == api.ScopeMesh && !put[m.Mesh] {
			need[m.Mesh] = r
		}
	}
	if len(need) == 0 {
		return nil
	}
	names := make([]string, 0, len(need))
	for n := range need {
		names = append(names, n)
	}
	rows, err := tx.Query(ctx, `SELECT name FROM ursa_resources WHERE type = 'Mesh' AND mesh = '' AND name = ANY($1)`, names)
	if err != nil {
		return classify(err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return classify(err)
	}
	for _, n := range found {
		delete(need, n)
	}
	for mesh, r := range need {
		return fmt.Errorf("%s: %w: %q", api.KeyOf(r), store.ErrMeshNotFound, mesh)
	}
	return nil
}
