package probe

import (
	"bytes"
	"io"
	"testing"
)

// FuzzHandshakes: whatever a server answers to the serve or the worker
// handshake, the probe ends (an error or a result), never panics, and a
// result it accepts is one a server may give.
func FuzzHandshakes(f *testing.F) {
	f.Add(append(words(serveMagic2, 0x207), words(0)...), false)
	f.Add(append(words(workerMagic2, 0x122), append(wireString("2.8.0"), words(stderrLast)...)...), true)
	f.Add(append(words(workerMagic2, 0x125), append(wireString("2.26.3"), words(1, stderrLast)...)...), true)
	f.Add(append(words(workerMagic2, 0x126), append(wireString("2.34.8"), words(2, stderrNext)...)...), true)
	f.Add(words(workerMagic2, 1<<40), true)
	f.Fuzz(func(t *testing.T, answer []byte, worker bool) {
		r := bytes.NewReader(answer)
		var res Result
		var err error
		if worker {
			res, err = workerHandshake(io.Discard, r)
		} else {
			res, err = serveHandshake(io.Discard, r)
		}
		if err != nil {
			return
		}
		if res.Trusted > NotTrusted || len(res.NixVersion) > 256 || (!worker && res.Trusted != TrustUnknown) {
			t.Fatalf("accepted %+v", res)
		}
	})
}
