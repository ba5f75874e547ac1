package bincache

import (
	"net/http/httptest"
	"testing"

	"go.uber.org/zap"
)

// TestLookupBeforeCheckTells: a lookup that reaches the store before the
// cache's first check ended says that it answers, once.
func TestLookupBeforeCheckTells(t *testing.T) {
	told := 0
	r := NewReader(zap.NewNop(), func() { told++ })
	c := &readCache{bucket: &Bucket{Cache: "fleet"}, checking: true}
	for _, err := range []error{nil, ErrNotFound, nil} {
		r.answerErr(httptest.NewRecorder(), httptest.NewRequest("GET", "/fleet/x.narinfo", nil), c, err)
	}
	if h := c.health; !h.Up || !h.Checked || told != 1 {
		t.Fatalf("health %+v, told %d times; want up, checked, told once", h, told)
	}
}
