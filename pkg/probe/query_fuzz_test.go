package probe

import (
	"bytes"
	"testing"
)

// FuzzReadPathInfos: whatever a server answers to QueryPathInfos, the
// reader ends (an error or the infos), never panics, never allocates
// beyond its bounds, and never returns more paths than were asked.
func FuzzReadPathInfos(f *testing.F) {
	one := append(wireString("/nix/store/aaaa-a"), wireString("/nix/store/aaaa-a.drv")...)
	one = append(one, words(1)...)
	one = append(one, wireString("/nix/store/bbbb-b")...)
	one = append(one, words(100, 200)...)
	one = append(one, wireString("sha256:0000")...)
	one = append(one, wireString("")...)
	one = append(one, words(1)...)
	one = append(one, wireString("k:sig")...)
	f.Add(append(one, wireString("")...), true)
	f.Add(append(append(one, one...), wireString("")...), true)
	f.Add(words(1<<40), false)
	f.Fuzz(func(t *testing.T, data []byte, askA bool) {
		asked := []string{"/nix/store/cccc-c"}
		if askA {
			asked = append(asked, "/nix/store/aaaa-a")
		}
		infos, _ := readPathInfos(&wireReader{r: bytes.NewReader(data)}, asked)
		seen := map[string]bool{}
		for _, i := range infos {
			if seen[i.Path] || (i.Path != asked[0] && (!askA || i.Path != asked[1])) {
				t.Fatalf("accepted %q (asked %v, seen %v)", i.Path, asked, seen)
			}
			seen[i.Path] = true
		}
	})
}
