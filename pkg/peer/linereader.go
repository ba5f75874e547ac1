package peer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// lineReader reads newline-terminated lines of at most max bytes, newline
// excluded, without buffering more than that of a longer line.
type lineReader struct {
	r   *bufio.Reader
	max int
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next line without its newline. A line longer than max
// is an error wrapping ErrDocumentTooLarge; a last line without newline
// is io.ErrUnexpectedEOF; no more lines is io.EOF.
func (l *lineReader) next() ([]byte, error) {
	var line []byte
	for {
		chunk, err := l.r.ReadSlice('\n')
		if len(line)+len(chunk) > l.max+1 || (err != nil && len(line)+len(chunk) > l.max) {
			return nil, fmt.Errorf("%w: a line of more than %d bytes", ErrDocumentTooLarge, l.max)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("document cut off after %d bytes: %w", len(line), io.ErrUnexpectedEOF)
		}
		return nil, err
	}
}
