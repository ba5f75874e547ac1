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
	f.Add(append(one, wireString("")...), 1)
	f.Add(words(1<<40), 3)
	f.Fuzz(func(t *testing.T, data []byte, asked int) {
		if asked < 0 || asked > 8 {
			return
		}
		infos, _ := readPathInfos(&wireReader{r: bytes.NewReader(data)}, asked)
		if len(infos) > asked {
			t.Fatalf("%d infos for %d asked", len(infos), asked)
		}
	})
}
