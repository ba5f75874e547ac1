package peer

// slot holds the latest document for one watcher (buffer 1). Setting never
// blocks and overwrites a value not yet taken, so a slow watcher skips to
// the newest document instead of queueing old ones.
type slot chan []byte

// set replaces the slot's document. Only one goroutine may set a slot at
// a time (the server's publishing lock): then, once drained, the send
// never blocks.
func (s slot) set(doc []byte) {
	select {
	case <-s:
	default:
	}
	s <- doc
}
