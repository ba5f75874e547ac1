package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/pkg/status"
	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, _, err := Open(path, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGenerationRisesOnlyWhenMeaningChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	steps := []struct {
		hash string
		want int64
	}{{"a", 1}, {"a", 1}, {"b", 2}, {"b", 2}, {"a", 3}}
	for _, st := range steps {
		d, isNew, err := s.NextDesired("f.yaml", []byte(st.hash), st.hash)
		if err != nil {
			t.Fatal(err)
		}
		if d.Generation != st.want {
			t.Fatalf("hash %s: generation %d, want %d", st.hash, d.Generation, st.want)
		}
		if again, _, _ := s.NextDesired("f.yaml", []byte(st.hash), st.hash); again.Generation != d.Generation {
			t.Fatal("NextDesired wrote something")
		}
		var rec *Desired
		if isNew {
			rec = &d
		}
		if err := s.SaveStatus(status.Status{Generation: d.Generation}, Event{}, rec); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	s = open(t, path)
	defer s.Close()
	d, err := s.Desired()
	if err != nil {
		t.Fatal(err)
	}
	if d == nil || d.Generation != 3 || string(d.Content) != "a" || d.File != "f.yaml" {
		t.Fatalf("after reopen: %+v, want generation 3 with content a", d)
	}
}

func TestSecondOpenerIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	_, _, err := Open(path, 50*time.Millisecond)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

func TestEventsAreBoundedAndOrdered(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	for i := 0; i < MaxEvents+10; i++ {
		if err := s.SaveStatus(status.Status{Generation: int64(i)}, Event{Generation: int64(i), Reason: fmt.Sprint(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.Events(MaxEvents * 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != MaxEvents {
		t.Fatalf("%d events kept, want %d", len(all), MaxEvents)
	}
	if all[0].Generation != 10 || all[len(all)-1].Generation != MaxEvents+9 {
		t.Fatalf("kept events %d..%d, want 10..%d", all[0].Generation, all[len(all)-1].Generation, MaxEvents+9)
	}
	last, _ := s.Events(2)
	if len(last) != 2 || last[1].Generation != MaxEvents+9 {
		t.Fatalf("Events(2) = %+v, want the two newest", last)
	}
}

func TestStatusAndPeersRoundTrip(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	if _, ok, err := s.LoadStatus(); ok || err != nil {
		t.Fatalf("empty store: ok=%v err=%v", ok, err)
	}
	want := status.Status{Host: "h", Generation: 4, ObservedGeneration: 4, Ready: true,
		Conditions: []status.Condition{{Type: status.Ready, Status: status.True, Reason: "AllReady"}}}
	if err := s.SaveStatus(want, Event{}, nil); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.LoadStatus()
	if err != nil || !ok || got.Host != "h" || got.Generation != 4 || len(got.Conditions) != 1 {
		t.Fatalf("LoadStatus = %+v %v %v", got, ok, err)
	}

	type pin struct{ Key string }
	if err := s.PutPeer("stage", pin{"k1"}); err != nil {
		t.Fatal(err)
	}
	var p pin
	if ok, err := s.GetPeer("stage", &p); !ok || err != nil || p.Key != "k1" {
		t.Fatalf("GetPeer = %+v %v %v", p, ok, err)
	}
	if err := s.DeletePeer("stage"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.GetPeer("stage", &p); ok {
		t.Fatal("peer still there after DeletePeer")
	}
}

// filled makes a database with some records and history, closed, and
// returns its path.
func filled(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	for i := 0; i < 300; i++ {
		if err := s.SaveStatus(status.Status{Generation: int64(i), LastError: strings.Repeat("x", 200)}, Event{Generation: int64(i)}, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.PutPeer(fmt.Sprintf("peer-%d", i%20), map[string]string{"hostKey": strings.Repeat("k", 100)}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	return path
}

// TestDamagedDatabaseIsMovedAside: a cut, scrambled, emptied or replaced
// state.db is never a crash: it is moved aside, reported, and a new one
// started.
func TestDamagedDatabaseIsMovedAside(t *testing.T) {
	for _, c := range []struct {
		name    string
		damage  func(t *testing.T, path string)
		damaged bool
	}{
		{"cut to 20 KiB", func(t *testing.T, path string) {
			if err := os.Truncate(path, 20<<10); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"scrambled pages", func(t *testing.T, path string) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// Past the two meta pages: leaf and branch pages.
			for i := 16 << 10; i+64 < len(raw); i += 4096 {
				copy(raw[i:], bytes.Repeat([]byte{0xa5}, 64))
			}
			if err := os.WriteFile(path, raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"scrambled meta", func(t *testing.T, path string) {
			raw, _ := os.ReadFile(path)
			for i := 16; i < 8192; i++ {
				raw[i] ^= 0xff
			}
			os.WriteFile(path, raw, 0o600)
		}, true},
		{"emptied", func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"a directory", func(t *testing.T, path string) {
			os.Remove(path)
			os.Mkdir(path, 0o700)
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filled(t)
			c.damage(t, path)
			s, opened, err := Open(path, 100*time.Millisecond)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			if !opened.New || (opened.Damaged != "") != c.damaged {
				t.Fatalf("opened %+v; want new, damaged %v", opened, c.damaged)
			}
			if c.damaged {
				if _, err := os.Lstat(opened.MovedTo); err != nil || !strings.HasPrefix(opened.MovedTo, path+".damaged-") {
					t.Fatalf("the damaged database is not at %q: %v", opened.MovedTo, err)
				}
			}
			// The new database works.
			if err := s.SaveStatus(status.Status{Generation: 1}, Event{}, nil); err != nil {
				t.Fatal(err)
			}
			if st, ok, err := s.LoadStatus(); err != nil || !ok || st.Generation != 1 {
				t.Fatalf("LoadStatus: %+v %v %v", st, ok, err)
			}
		})
	}
	t.Run("sound", func(t *testing.T) {
		s, opened, err := Open(filled(t), 100*time.Millisecond)
		if err != nil || opened.New || opened.Damaged != "" {
			t.Fatalf("a sound database: %+v, %v", opened, err)
		}
		s.Close()
	})
}

// FuzzStoreRecords: whatever bytes the records of state.db hold (a file
// damaged, or written by another version), reading them never panics:
// each read gives a value or an error.
func FuzzStoreRecords(f *testing.F) {
	f.Add([]byte(`{"host":"stage","conditions":[{"type":"Ready","status":"True"}]}`))
	f.Add([]byte(`{"generation":3,"hash":"x","file":"f","content":"YQ=="}`))
	f.Add([]byte(`{"hash":"abc","at":"2026-12-02T00:00:00Z"}`))
	f.Add([]byte(`{"hostKey":"ssh-ed25519 AAAA","facts":{"version":1}}`))
	f.Add([]byte(`42`))
	f.Add([]byte(`{`))
	f.Add([]byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		s := open(t, filepath.Join(t.TempDir(), "state.db"))
		defer s.Close()
		err := s.db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			for _, k := range [][]byte{keyStatus, keyDesired, []byte("rec/any")} {
				if err := meta.Put(k, raw); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketPeers).Put([]byte("peer"), raw)
		})
		if err != nil {
			t.Fatal(err)
		}
		s.LoadStatus()
		s.Desired()
		var anyValue any
		s.Get("any", &anyValue)
		var m map[string][]time.Time
		s.Get("any", &m)
		var str string
		s.Get("any", &str)
		var peer map[string]any
		s.GetPeer("peer", &peer)
		if _, _, err := s.NextDesired("f", []byte("x"), "h"); err == nil {
			// A readable record or none: the next generation follows.
			return
		}
	})
}

func TestQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, _, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if items, total, err := s.Queued("fleet", 10); err != nil || len(items) != 0 || total != 0 {
		t.Fatalf("empty queue: %q %d %v", items, total, err)
	}
	if err := s.Enqueue("fleet", []string{"/nix/store/b", "/nix/store/a", "/nix/store/b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue("other", []string{"/nix/store/c"}); err != nil {
		t.Fatal(err)
	}
	items, total, err := s.Queued("fleet", 1)
	if err != nil || total != 2 || len(items) != 1 || items[0] != "/nix/store/a" {
		t.Fatalf("Queued(fleet, 1) = %q, %d, %v; want [/nix/store/a], 2", items, total, err)
	}
	if err := s.Dequeue("fleet", []string{"/nix/store/a"}); err != nil {
		t.Fatal(err)
	}
	// The queue survives a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, _, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	items, total, err = s.Queued("fleet", 10)
	if err != nil || total != 1 || len(items) != 1 || items[0] != "/nix/store/b" {
		t.Fatalf("after a restart: %q, %d, %v; want [/nix/store/b]", items, total, err)
	}
	if items, _, _ := s.Queued("other", 10); len(items) != 1 {
		t.Fatalf("queue other: %q", items)
	}
}
