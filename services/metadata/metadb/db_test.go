package metadb

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/flotilla-project/flotilla/internal/memstore"
)

func TestOpenTwiceOnTheSameRootFails(t *testing.T) {
	root := t.TempDir()
	db, err := Open(root, memstore.New())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	second, err := Open(root, memstore.New())
	if err == nil {
		second.Close()
		t.Fatal("a second Open on the same root succeeded; two metadata services would share meta.db")
	}
	if !strings.Contains(err.Error(), "another process") {
		t.Errorf("second Open failed with %q; want it to say another process is using the root", err)
	}
}

func TestOpenKeepsRecordsAcrossRestarts(t *testing.T) {
	root := t.TempDir()
	db, err := Open(root, memstore.New())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateNamespace(context.Background(), Namespace{Name: "kept", Labels: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(root, memstore.New())
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer db.Close()
	ns, err := db.GetNamespace(context.Background(), "kept")
	if err != nil || ns.Labels["a"] != "b" {
		t.Errorf("after reopen namespace = %+v, %v", ns, err)
	}
}

func TestOpenRefusesAnotherSchemaVersion(t *testing.T) {
	root := t.TempDir()
	db, err := Open(root, memstore.New())
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Bolt().Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketV1).Put(keyVersion, binary.AppendUvarint(nil, SchemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db, err = Open(root, memstore.New())
	if err == nil {
		db.Close()
		t.Fatal("Open accepted a meta.db of a newer schema version")
	}
	if !strings.Contains(err.Error(), "schema version") {
		t.Errorf("Open failed with %q; want it to name the schema version", err)
	}
	// The refused Open released the file: a later one gets the same answer,
	// not a lock timeout.
	_, err = Open(root, memstore.New())
	if err == nil || strings.Contains(err.Error(), "another process") {
		t.Errorf("Open after a refused Open: %v; want the schema error again", err)
	}
}

func TestOpenWritesTheSchemaVersion(t *testing.T) {
	db, _ := newTestDB(t)
	var v uint64
	if err := db.Bolt().View(func(tx *bolt.Tx) error {
		v, _ = binary.Uvarint(tx.Bucket(bucketV1).Get(keyVersion))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v != SchemaVersion {
		t.Errorf("v1/version = %d, want %d", v, SchemaVersion)
	}
	if filepath.Base(db.Bolt().Path()) != "meta.db" {
		t.Errorf("store file %s, want meta.db", db.Bolt().Path())
	}
}
