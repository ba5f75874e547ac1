package peer

import (
	"fmt"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// BenchmarkPublishToConsumers: a serving host with N known consumers
// watching publishes a change; bytes-to-watchers is what every watcher's
// slot receives in all.
func BenchmarkPublishToConsumers(b *testing.B) {
	for _, n := range []int{10, 100, 300} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			host := newSigner(b)
			names := map[string]string{}
			var keys []ssh.PublicKey
			f := validFacts(b, host.PublicKey())
			f.Serve.Authorized = nil
			for i := range n {
				k := newSigner(b).PublicKey()
				keys = append(keys, k)
				names[string(k.Marshal())] = fmt.Sprintf("prod-%d", i)
				f.Serve.Authorized = append(f.Serve.Authorized, AuthorizedFact{Host: fmt.Sprintf("prod-%d", i), Fingerprint: ssh.FingerprintSHA256(k), Applied: true})
			}
			s := NewServer(zap.NewNop(), host, ServerOptions{Known: func(k ssh.PublicKey) (string, bool) {
				name, ok := names[string(k.Marshal())]
				return name, ok
			}})
			var slots []slot
			for _, k := range keys {
				w, _ := s.watch(k)
				slots = append(slots, w)
			}
			var sent int
			for b.Loop() {
				f.Generation++
				s.Publish(f)
				for _, w := range slots {
					sent += len(<-w)
				}
			}
			b.ReportMetric(float64(sent)/float64(b.N), "bytes-to-watchers/op")
		})
	}
}
