package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nixpeer/nixpeer/pkg/bincache"
)

var (
	descCacheLookups = prometheus.NewDesc("nixpeer_cache_lookups_total",
		"Requests of this host's Nix for a cache's narinfos and NARs, by result: hit (served from the object store), miss (the store lacks it), down (answered as a miss at once while the store cannot be reached).", []string{"cache", "result"}, nil)
	descCacheQueued = prometheus.NewDesc("nixpeer_cache_publish_queued",
		"Store paths queued for upload to a cache this host publishes to.", []string{"cache"}, nil)
	descCachePublished = prometheus.NewDesc("nixpeer_cache_published_total",
		"Store paths this agent published to a cache, by result: uploaded, or present (in the bucket already).", []string{"cache", "result"}, nil)
	descCacheReachable = prometheus.NewDesc("nixpeer_cache_reachable",
		"1 while the object store of a cache this host reads answers, 0 while it cannot be reached (its lookups are answered as misses).", []string{"cache"}, nil)
)

// cacheCollector reads the cache tier at each scrape: its counters as
// they are now.
type cacheCollector struct{ tier *bincache.Tier }

// WatchCaches exports the counters of the cache tier t.
func (m *Metrics) WatchCaches(t *bincache.Tier) {
	m.reg.MustRegister(&cacheCollector{tier: t})
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheLookups, descCacheQueued, descCachePublished, descCacheReachable} {
		ch <- d
	}
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	metric := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	for name, h := range c.tier.Health() {
		metric(descCacheLookups, prometheus.CounterValue, float64(h.Hits), name, "hit")
		metric(descCacheLookups, prometheus.CounterValue, float64(h.Misses), name, "miss")
		metric(descCacheLookups, prometheus.CounterValue, float64(h.Down), name, "down")
		if h.Checked {
			metric(descCacheReachable, prometheus.GaugeValue, b2f(h.Up), name)
		}
	}
	for name, s := range c.tier.Publishing() {
		metric(descCacheQueued, prometheus.GaugeValue, float64(s.Queued), name)
		metric(descCachePublished, prometheus.CounterValue, float64(s.Uploaded), name, "uploaded")
		metric(descCachePublished, prometheus.CounterValue, float64(s.Present), name, "present")
	}
}
