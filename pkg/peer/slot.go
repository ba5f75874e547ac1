package peer

import "sync"

// slot holds the latest document for one watcher. Setting never blocks and
// overwrites a value not yet taken, so a slow watcher skips to the newest
// document instead of queueing old ones.
type slot struct {
	mu    sync.Mutex
	doc   []byte
	ready chan struct{} // has a token while doc is unread
}

func newSlot() *slot {
	return &slot{ready: make(chan struct{}, 1)}
}

// set replaces the slot's document and wakes its reader.
func (s *slot) set(doc []byte) {
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// take returns the unread document, or nil when it was taken already.
func (s *slot) take() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	doc := s.doc
	s.doc = nil
	return doc
}
