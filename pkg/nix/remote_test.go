package nix

import "testing"

func TestParsePathInfoJSON(t *testing.T) {
	old := `[{"path":"/nix/store/a-a","narHash":"sha256-x","narSize":8,"references":[],"signatures":["k:s"]}]`
	current := `{"/nix/store/a-a":{"narHash":"sha256-x","narSize":8,"references":[],"signatures":["k:s"]},"/nix/store/b-b":null}`
	for name, raw := range map[string]string{"before 2.19": old, "2.19 and later": current} {
		got, err := ParsePathInfoJSON([]byte(raw))
		if err != nil || len(got) != 1 || got[0].Path != "/nix/store/a-a" || got[0].NarSize != 8 || got[0].Signatures[0] != "k:s" {
			t.Errorf("%s: %+v, %v", name, got, err)
		}
	}
	if _, err := ParsePathInfoJSON([]byte(`"nope"`)); err == nil {
		t.Error("a string parsed")
	}
}

func FuzzParsePathInfoJSON(f *testing.F) {
	f.Add([]byte(`{"/nix/store/a-a":null}`))
	f.Add([]byte(`[{"path":"/nix/store/a-a"}]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ParsePathInfoJSON(raw)
	})
}
