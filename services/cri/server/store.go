package server

// forget drops all that is kept of a removed object.
func (s *Server) forget(id string) {
	s.store.Forget(id)
	s.exits.Forget(id)
	rates.Forget(id)
}
